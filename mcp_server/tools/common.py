"""What every tool shares: its dependencies, the program of the call, and the reply format."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from thunder_env import EnvManager, InvalidSpecError, Lease

from ..binding import principal_for_call, program_for_call
from ..config import ServerConfig
from ..errors import tool_errors
from ..models import PortInfo, SandboxSummary, ToolResult
from ..programs import ProgramRegistry, ProgramState

ToolFn = TypeVar("ToolFn", bound=Callable[..., Any])


@dataclass
class Deps:
    manager: EnvManager
    config: ServerConfig
    programs: ProgramRegistry
    # Serializes read-modify-write edits of one file (sandbox_id, path): lock and number of users.
    _file_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def file_lock(self, sandbox_id: str, path: str) -> AsyncIterator[None]:
        key = (sandbox_id, path)
        lock, users = self._file_locks.get(key, (asyncio.Lock(), 0))
        self._file_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._file_locks[key]
            if users == 1:
                del self._file_locks[key]
            else:
                self._file_locks[key] = (lock, users - 1)


def tool(
    server: MCPServer,
    title: str,
    *,
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
) -> Callable[[ToolFn], ToolFn]:
    """Register a tool with its annotations; the docstring, dedented, is the description the model reads."""

    def decorator(fn: ToolFn) -> ToolFn:
        annotations = ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=None if read_only else destructive,
            idempotent_hint=idempotent,
            open_world_hint=False,  # sandboxes are a closed world (network off unless asked)
        )
        server.add_tool(fn, title=title, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations)
        return fn

    return decorator


@contextlib.asynccontextmanager
async def program_call(deps: Deps, ctx: Context, *, runs_command: bool = False) -> AsyncIterator[ProgramState]:
    """The calling program's state for the duration of one tool call; errors become ToolError.

    ``runs_command``: the call runs commands in the sandbox (file tools): it counts as one command in
    flight against the program's cap while it lasts."""
    with tool_errors():
        request = ctx.request_context.request
        program_id = program_for_call(request, deps.config.default_program_id)
        async with deps.programs.call(program_id, principal_for_call(request)) as state:
            limit = deps.config.max_processes_per_program
            with state.exec_slot(limit) if runs_command else contextlib.nullcontext():
                yield state


def caller_principal(ctx: Context) -> str | None:
    """Who authenticated the current call (None without authentication: stdio, in memory)."""
    return principal_for_call(ctx.request_context.request)


def reply(result: ToolResult) -> CallToolResult:
    """Structured content for programs, readable text for the model."""
    return CallToolResult(
        content=[TextContent(type="text", text=result.to_text())], structured_content=result.model_dump(mode="json")
    )


def check_seconds(name: str, value: float, maximum: float) -> float:
    if not math.isfinite(value) or not 0 < value <= maximum:
        raise InvalidSpecError(f"{name} must be a number of seconds in (0, {maximum:g}], got {value!r}")
    return value


def check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidSpecError(f"invalid environment variable {key!r}: names are non-empty, without '=' or NUL")
    return env


def summarize(deps: Deps, state: ProgramState, lease: Lease) -> SandboxSummary:
    info = deps.manager.sandbox_info(lease)
    spec = deps.manager.sandbox_spec(lease)
    return SandboxSummary(
        sandbox_id=lease.sandbox_id,
        image=spec.image,
        workdir=spec.workdir,
        user=spec.user or "root",
        network=spec.network,
        cpus=spec.cpus,
        memory_bytes=spec.memory_bytes,
        origin=getattr(info, "origin", "cold"),
        lease_count=info.lease_count,
        ports=[
            PortInfo(container_port=p.container_port, host=p.host, host_port=p.host_port, url=p.url) for p in info.ports
        ],
        running_processes=[p.process_id for p in state.running_processes(lease.sandbox_id)],
    )
