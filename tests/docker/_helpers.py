"""Small helpers shared by the pool, snapshot and template tests."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable

import aiodocker
import pytest

from thunder_env import EnvManager, SandboxSpec
from thunder_env.docker import DockerBackend
from thunder_env.leases import Lease
from thunder_env.output import RollingBuffer
from thunder_env.processes import ExecProcess


def with_setup(spec: SandboxSpec, *steps: str) -> SandboxSpec:
    return SandboxSpec(**{**spec.model_dump(), "setup": steps})


async def image_exists(backend: DockerBackend, image_id: str) -> bool:
    try:
        await backend.client.images.inspect(image_id)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def containers_labelled(backend: DockerBackend, **labels: str) -> list[str]:
    """Sandbox ids of the containers carrying every given label (dots spelled as '__')."""
    filters = {"label": [f"{k.replace('__', '.')}={v}" for k, v in labels.items()]}
    found = await backend.client.containers.list(all=True, filters=filters)
    return sorted(c._container["Labels"]["thunder.sandbox"] for c in found)


async def crash_after_first_line(script: str, *args: str, timeout_s: float = 120.0) -> bytes:
    """Run a Python ``script`` that prints a line once its work is done, then SIGKILL it (a crashed
    manager); returns that line."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        return await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, what: str = "") -> None:
    """Poll ``check`` until it holds; fail with ``what`` after the timeout."""
    # Polling on purpose: the state lives in the engine, which sends no event for it.
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.1)


def start_background(manager: EnvManager, lease: Lease, command: str) -> ExecProcess:
    """A command left running in the background, the way the MCP server's sandbox_exec does it."""
    process = ExecProcess(
        "proc-" + secrets.token_hex(4), lease.sandbox_id, command, RollingBuffer(1 << 20), RollingBuffer(1 << 20)
    )
    process.start(manager.exec(lease, command, timeout_s=None, on_output=process.on_output))
    return process


async def until_listed(manager: EnvManager, lease: Lease, command: str) -> None:
    """Wait until ``command`` shows in the sandbox's process list (it started: a kill then has work to do)."""

    async def listed() -> bool:
        text = (await manager.exec(lease, "ps -o args 2>/dev/null || ps -eo args")).stdout.text
        return any(line.strip() == command for line in text.splitlines())

    await eventually(listed, what=f"{command!r} runs")
