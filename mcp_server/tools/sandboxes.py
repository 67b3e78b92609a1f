"""Sandbox lifecycle tools: create, list, share, release, snapshot, fork, expose a port, end the program."""

# No `from __future__ import annotations`: the SDK evaluates tool signatures, whose descriptions use
# values of the enclosing register() call.
import asyncio
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from thunder_env import InvalidSpecError, Lease, SandboxSpec
from thunder_env.results import SnapshotInfo
from thunder_env.snapshots import SNAPSHOT_REPOSITORY

from ..config import ServerConfig
from ..errors import PortLimitError, ProgramAccessError, ProgramRetiredError, SnapshotAccessError
from ..models import (
    ForkResult,
    PortResult,
    ProgramEndResult,
    ReleaseResult,
    SandboxList,
    SandboxSummary,
    ShareResult,
    SnapshotResult,
)
from ..programs import ProgramState
from .common import Deps, caller_principal, program_call, reply, summarize, tool

SandboxId = Annotated[
    str, Field(description="A sandbox id from sandbox_create or sandbox_list, e.g. 'sb-1a2b3c4d5e6f'")
]


def register(server: MCPServer, deps: Deps) -> None:
    manager, programs = deps.manager, deps.programs

    @tool(server, "Create a sandbox")
    async def sandbox_create(
        ctx: Context,
        template: Annotated[
            str | None,
            Field(description="A template the server offers (see the server instructions), e.g. 'python' or 'base'"),
        ] = None,
        image: Annotated[
            str | None,
            Field(
                description="An image this server offers (see the server instructions); default is the server's "
                "default image. Snapshots are started with snapshot_id, not by image"
            ),
        ] = None,
        snapshot_id: Annotated[
            str | None,
            Field(description="Start from a snapshot this program took (sandbox_snapshot) instead of an image"),
        ] = None,
        setup: Annotated[
            list[str] | None,
            Field(
                description="Shell commands run once to prepare the "
                "environment; the result is cached and reused by later "
                "sandbox_create calls with the same steps"
            ),
        ] = None,
        cpus: Annotated[float | None, Field(gt=0, description="CPU cores")] = None,
        memory_mb: Annotated[int | None, Field(ge=16, description="Memory limit in MiB")] = None,
        network: Annotated[
            Literal["none", "internal", "bridge"] | None,
            Field(
                description="'none' (default): no network; 'internal': reachable from the "
                "server (needed for port_expose) but not the internet; 'bridge': internet, "
                "if the server allows it"
            ),
        ] = None,
        env: Annotated[dict[str, str] | None, Field(description="Environment variables of every command")] = None,
        workdir: Annotated[str | None, Field(description="Absolute working directory")] = None,
        ports: Annotated[list[int] | None, Field(description="Container ports to expose at once")] = None,
    ) -> Annotated[CallToolResult, SandboxSummary]:
        """Create a fresh sandbox (an isolated Linux container) for this program and return its sandbox_id.

        Pass the sandbox_id to every other tool. The sandbox lives until sandbox_release or program_end
        (or until the program stays idle too long). Give at most one of template, image and snapshot_id;
        with none, the server's default image is used.
        """
        async with program_call(deps, ctx) as state:
            if sum(x is not None for x in (template, image, snapshot_id)) > 1:
                raise InvalidSpecError("give at most one of template, image and snapshot_id")
            if snapshot_id is not None:
                if any(x is not None for x in (setup, cpus, memory_mb, network, env, workdir, ports)):
                    raise InvalidSpecError(
                        "a sandbox started from a snapshot keeps the snapshot's settings; pass only snapshot_id"
                    )
                leases = await _fork(deps, state, snapshot_id, 1)
                return reply(summarize(deps, state, leases[0]))
            spec = _build_spec(deps, template, image, setup, cpus, memory_mb, network, env, workdir, ports)
            lease = await _acquire(deps, state, spec)
            return reply(summarize(deps, state, lease))

    @tool(server, "List my sandboxes", read_only=True, idempotent=True)
    async def sandbox_list(ctx: Context) -> Annotated[CallToolResult, SandboxList]:
        """List the sandboxes this program holds, with their ports and running background processes."""
        async with program_call(deps, ctx) as state:
            summaries = [summarize(deps, state, lease) for lease in state.live_leases()]
            return reply(SandboxList(program_id=state.program_id, sandboxes=summaries))

    @tool(server, "Share a sandbox with another program", idempotent=True)
    async def sandbox_share(
        ctx: Context,
        sandbox_id: SandboxId,
        program_id: Annotated[str, Field(description="The program to grant access to")],
    ) -> Annotated[CallToolResult, ShareResult]:
        """Give another program its own lease on a sandbox this program holds.

        Both programs can then use it; it lives until every holder has released it or ended. The other
        program must be configured on the server or have made a call with the same token already.
        """
        async with program_call(deps, ctx) as state:
            programs.lease(state, sandbox_id)  # only a holder may share
            # Only toward programs the caller may name: sharing creates the target's state and uses its
            # quota, so an arbitrary id would let one tenant fill another's (or invent programs).
            if program_id != state.program_id and not programs.may_name(program_id, caller_principal(ctx)):
                raise ProgramAccessError(program_id)
            target = programs.state(program_id)
            existing = target.leases.get(sandbox_id)
            if existing is not None and not existing.released:
                return reply(ShareResult(sandbox_id=sandbox_id, program_id=program_id, already_shared=True))
            _check_capacity(deps, target, 1)
            lease = await manager.share(program_id, sandbox_id)
            if target.ended:
                await manager.release(lease)
                raise ProgramRetiredError(program_id, "it ended while the share was being made")
            target.leases[sandbox_id] = lease
            return reply(ShareResult(sandbox_id=sandbox_id, program_id=program_id, already_shared=False))

    @tool(server, "Release a sandbox", destructive=True, idempotent=True)
    async def sandbox_release(ctx: Context, sandbox_id: SandboxId) -> Annotated[CallToolResult, ReleaseResult]:
        """Stop using a sandbox: its background processes started by this program are killed and this
        program's lease is dropped. The sandbox is destroyed unless another program still holds it."""
        async with program_call(deps, ctx) as state:
            lease = programs.lease(state, sandbox_id)
            del state.leases[sandbox_id]  # first, so that a concurrent release finds nothing to release
            running = state.running_processes(sandbox_id)
            for process_id in [pid for pid, p in state.processes.items() if p.sandbox_id == sandbox_id]:
                del state.processes[process_id]
            await asyncio.gather(*(p.kill() for p in running), return_exceptions=True)
            await programs.protect(manager.release(lease))
            held = any(i.sandbox_id == sandbox_id and i.lease_count > 0 for i in manager.sandboxes())
            return reply(ReleaseResult(sandbox_id=sandbox_id, destroyed=not held, processes_killed=len(running)))

    @tool(server, "Expose a sandbox port", idempotent=True)
    async def port_expose(
        ctx: Context,
        sandbox_id: SandboxId,
        port: Annotated[int, Field(ge=1, le=65535, description="The port a service listens on in the sandbox")],
    ) -> Annotated[CallToolResult, PortResult]:
        """Make a TCP port of the sandbox reachable from the server's machine (loopback) and return its URL.

        The sandbox must have been created with network='internal' (or 'bridge').
        """
        async with program_call(deps, ctx) as state:
            lease = programs.lease(state, sandbox_id)
            if any(p.container_port == port for p in manager.sandbox_info(lease).ports):
                binding = await manager.expose_port(lease, port)  # already exposed: the same forward
            else:
                async with state.port_slot(_exposed_ports(deps, state), deps.config.max_ports_per_program):
                    binding = await manager.expose_port(lease, port)
            return reply(
                PortResult(
                    sandbox_id=sandbox_id,
                    container_port=port,
                    host=binding.host,
                    host_port=binding.host_port,
                    url=binding.url,
                )
            )

    @tool(server, "Snapshot a sandbox")
    async def sandbox_snapshot(ctx: Context, sandbox_id: SandboxId) -> Annotated[CallToolResult, SnapshotResult]:
        """Save the sandbox's current filesystem as a snapshot (processes are not saved).

        Start copies of it with sandbox_fork, e.g. to try several approaches from the same state. The
        snapshot belongs to this program and is deleted when the program ends.
        """
        async with program_call(deps, ctx) as state:
            info = await _snapshot(deps, state, sandbox_id)
            return reply(SnapshotResult(snapshot_id=info.snapshot_id, source_sandbox_id=sandbox_id))

    @tool(server, "Fork sandboxes from a snapshot")
    async def sandbox_fork(
        ctx: Context,
        snapshot_id: Annotated[str | None, Field(description="A snapshot this program took")] = None,
        sandbox_id: Annotated[str | None, Field(description="Or: a sandbox to snapshot first, then fork")] = None,
        count: Annotated[int, Field(ge=1, le=64, description="How many sandboxes to start")] = 1,
    ) -> Annotated[CallToolResult, ForkResult]:
        """Start `count` new sandboxes, each with the filesystem of a snapshot (they share its disk).

        Give snapshot_id, or sandbox_id to snapshot that sandbox now and fork from it.
        """
        async with program_call(deps, ctx) as state:
            if (snapshot_id is None) == (sandbox_id is None):
                raise InvalidSpecError("give exactly one of snapshot_id and sandbox_id")
            if sandbox_id is not None:
                snapshot_id = (await _snapshot(deps, state, sandbox_id)).snapshot_id
            assert snapshot_id is not None
            leases = await _fork(deps, state, snapshot_id, count)
            return reply(
                ForkResult(snapshot_id=snapshot_id, sandboxes=[summarize(deps, state, lease) for lease in leases])
            )

    @tool(server, "End this program", destructive=True, idempotent=True)
    async def program_end(ctx: Context) -> Annotated[CallToolResult, ProgramEndResult]:
        """Finish this program: kill its background processes and release every sandbox and snapshot it
        holds. Call it once the task is done; the program can make no further calls afterwards."""
        async with program_call(deps, ctx) as state:
            report = await programs.end(state.program_id, "ended by program_end")
            return reply(
                ProgramEndResult(
                    program_id=report.program_id,
                    sandboxes_released=report.sandboxes_released,
                    sandboxes_destroyed=report.sandboxes_destroyed,
                    processes_killed=report.processes_killed,
                )
            )


def _build_spec(
    deps: Deps,
    template: str | None,
    image: str | None,
    setup: list[str] | None,
    cpus: float | None,
    memory_mb: int | None,
    network: str | None,
    env: dict[str, str] | None,
    workdir: str | None,
    ports: list[int] | None,
) -> SandboxSpec:
    config = deps.config
    if template is not None:
        base = config.templates.get(template)
        if base is None:
            offered = ", ".join(sorted(config.templates)) or "none"
            raise InvalidSpecError(f"unknown template {template!r}; this server offers: {offered}")
    else:
        chosen = offered_image(config, image) if image is not None else config.default_image
        base = SandboxSpec(image=chosen, memory_bytes=config.default_memory_bytes)
    if cpus is not None and cpus > config.max_cpus:
        raise InvalidSpecError(f"cpus must be at most {config.max_cpus:g} on this server, got {cpus:g}")
    if memory_mb is not None and memory_mb << 20 > config.max_memory_bytes:
        raise InvalidSpecError(
            f"memory_mb must be at most {config.max_memory_bytes >> 20} on this server, got {memory_mb}"
        )
    if network == "bridge" and not config.allow_bridge_network:
        raise InvalidSpecError("network 'bridge' (internet access) is disabled on this server; use 'internal'")
    overrides: dict[str, object] = {}
    if cpus is not None:
        overrides["cpus"] = cpus
    if memory_mb is not None:
        overrides["memory_bytes"] = memory_mb << 20
    if network is not None:
        overrides["network"] = network
    if env:
        overrides["env"] = {**base.env, **env}
    if workdir is not None:
        overrides["workdir"] = workdir
    if ports:
        overrides["ports"] = tuple(ports)
    if setup:
        overrides["setup"] = (*base.setup, *setup)
    # Validated again as a whole: the spec's own rules (absolute workdir, port range...) apply.
    return SandboxSpec.model_validate({**base.model_dump(), **overrides})


def offered_images(config: ServerConfig) -> tuple[str, ...]:
    """The images sandbox_create(image=...) accepts: ``allowed_images`` if configured, else the default
    image and the templates' images. Never a snapshot's image, never an image id."""
    if config.allowed_images is not None:
        return config.allowed_images
    return tuple(dict.fromkeys((config.default_image, *(spec.image for spec in config.templates.values()))))


def offered_image(config: ServerConfig, image: str) -> str:
    """``image`` as configured, if the server offers it; else a clear error.

    Names are compared exactly (a missing tag means ``:latest``): an image id, an id prefix or another
    name of the same image is refused, so a program cannot start another program's snapshot (or any other
    local image) by naming it; snapshots are started by snapshot_id, through the ownership check.
    """
    offered = offered_images(config)
    if _repository(image) == SNAPSHOT_REPOSITORY:
        raise InvalidSpecError(
            f"image {image!r} is a snapshot: start a sandbox from a snapshot this program holds with "
            "sandbox_create(snapshot_id=...) or sandbox_fork, not by its image name"
        )
    wanted = _with_tag(image)
    for candidate in offered:
        if _with_tag(candidate) == wanted and _repository(candidate) != SNAPSHOT_REPOSITORY:
            return candidate
    raise InvalidSpecError(
        f"image {image!r} is not offered by this server; offered images: {', '.join(offered) or 'none'} "
        "(or use a template)"
    )


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    head, sep, tail = name.rpartition(":")
    return head if sep and "/" not in tail else name


def _with_tag(image: str) -> str:
    if "@" in image:
        return image
    return image if _repository(image) != image else f"{image}:latest"


def _check_capacity(deps: Deps, state: ProgramState, adding: int) -> None:
    held = len(state.live_leases()) + state.pending_creates
    limit = deps.config.max_sandboxes_per_program
    if held + adding > limit:
        raise InvalidSpecError(
            f"program {state.program_id} holds {held} sandbox(es); at most {limit} are allowed on this server. "
            "Release some with sandbox_release first"
        )


def _exposed_ports(deps: Deps, state: ProgramState) -> int:
    """Ports exposed on the sandboxes the program holds (a shared sandbox's count for each holder)."""
    return sum(len(info.ports) for info in deps.manager.sandboxes(state.program_id))


async def _acquire(deps: Deps, state: ProgramState, spec: SandboxSpec) -> Lease:
    _check_capacity(deps, state, 1)
    exposed, limit = _exposed_ports(deps, state), deps.config.max_ports_per_program
    if spec.ports and exposed + state.pending_ports + len(spec.ports) > limit:
        raise PortLimitError(state.program_id, exposed + state.pending_ports, limit)
    state.pending_creates += 1
    try:
        lease = await deps.manager.acquire(state.program_id, spec)
    finally:
        state.pending_creates -= 1
    return (await _adopt(deps, state, [lease]))[0]


async def _fork(deps: Deps, state: ProgramState, snapshot_id: str, count: int) -> list[Lease]:
    if not _holds_snapshot(deps, state, snapshot_id):
        raise SnapshotAccessError(snapshot_id, state.program_id)
    _check_capacity(deps, state, count)
    state.pending_creates += count
    try:
        leases = await deps.manager.fork(state.program_id, snapshot_id, count)
    finally:
        state.pending_creates -= count
    return await _adopt(deps, state, leases)


async def _snapshot(deps: Deps, state: ProgramState, sandbox_id: str) -> SnapshotInfo:
    info = await deps.manager.snapshot(deps.programs.lease(state, sandbox_id))
    if state.ended:  # the program's end already dropped its holds: this one would never be
        await deps.programs.protect(deps.manager.provisioner.release_snapshot(state.program_id, info.snapshot_id))
        raise ProgramRetiredError(state.program_id, "it ended while the snapshot was being taken")
    return info


def _holds_snapshot(deps: Deps, state: ProgramState, snapshot_id: str) -> bool:
    """A program forks the snapshots it holds: those it took, and those held for it (hold_snapshot)."""
    holder = f"program:{state.program_id}"
    snapshots = deps.manager.provisioner.snapshots()
    return any(info.snapshot_id == snapshot_id and holder in info.holders for info in snapshots)


async def _adopt(deps: Deps, state: ProgramState, leases: list[Lease]) -> list[Lease]:
    """Record new leases in the program, unless it ended meanwhile: then give them back."""
    if state.ended:
        releases = asyncio.gather(*(deps.manager.release(lease) for lease in leases), return_exceptions=True)
        await deps.programs.protect(releases)
        raise ProgramRetiredError(state.program_id, "it ended while its sandbox was being created")
    # Sandboxes that expose ports (sandbox_create(ports=...), forks of one that did) count toward the
    # program's port cap; past it they are given back and the call is refused.
    adding = sum(len(deps.manager.sandbox_info(lease).ports) for lease in leases)
    if adding:
        exposed, limit = _exposed_ports(deps, state) + state.pending_ports, deps.config.max_ports_per_program
        if exposed + adding > limit:
            releases = asyncio.gather(*(deps.manager.release(lease) for lease in leases), return_exceptions=True)
            await deps.programs.protect(releases)
            raise PortLimitError(state.program_id, exposed, limit)
    for lease in leases:
        state.leases[lease.sandbox_id] = lease
    return leases
