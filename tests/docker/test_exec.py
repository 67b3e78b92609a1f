"""Exec through the manager against real containers."""

from __future__ import annotations

import asyncio
import time

import pytest

from thunder_env import EnvManager, ExecResult, InvalidSpecError, OutputChunk, SandboxSpec, ToolEvent
from thunder_env.output import TRUNCATION_MARKER

from ._helpers import start_background, until_listed


@pytest.fixture
async def lease(manager: EnvManager, base_spec: SandboxSpec):
    return await manager.acquire("prog-exec", base_spec)


async def test_exit_code_streams_env_workdir_stdin(manager: EnvManager, lease) -> None:
    result = await manager.exec(lease, "echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout.text, result.stderr.text) == (3, "out\n", "err\n")
    assert not result.ok and not result.timed_out
    result = await manager.exec(lease, "echo $FOO; pwd", env={"FOO": "bar baz"}, workdir="/tmp")
    assert result.stdout.text == "bar baz\n/tmp\n"
    result = await manager.exec(lease, ["cat"], stdin=b"line1\nline2")
    assert result.stdout.data == b"line1\nline2"
    result = await manager.exec(lease, ["echo", "$HOME; rm -rf /"])  # argv: no shell
    assert result.stdout.text == "$HOME; rm -rf /\n"


async def test_timeout_kills_the_whole_process_tree(manager: EnvManager, lease) -> None:
    started = time.monotonic()
    result = await manager.exec(lease, "sleep 300 & (setsid sleep 301 &); sleep 302", timeout_s=1)
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 6
    ps = await manager.exec(lease, "ps -o args")
    assert "sleep 30" not in ps.stdout.text, ps.stdout.text


async def test_ten_megabytes_of_output_is_truncated_head_and_tail(manager: EnvManager, lease) -> None:
    result = await manager.exec(
        lease, "echo START; head -c 10485760 /dev/zero | tr '\\0' x; echo; echo END", output_limit=1 << 20
    )
    out = result.stdout
    assert out.truncated and out.total_bytes == 10485760 + len("START\n") + 1 + len("END\n")
    assert out.data.startswith(b"START\nxxx") and out.data.endswith(b"xxx\nEND\n")
    assert len(out.data) == (1 << 20) + len(TRUNCATION_MARKER)


async def test_binary_output_is_bytes_exact(manager: EnvManager, lease) -> None:
    result = await manager.exec(lease, r"printf '\377\000\001abc'")
    assert result.stdout.data == b"\xff\x00\x01abc"
    assert result.stdout.text == "\ufffd\x00\x01abc"


async def test_stream_delivers_output_before_the_end(manager: EnvManager, lease) -> None:
    started = time.monotonic()
    seen: list[tuple[float, OutputChunk | ExecResult]] = []
    async for item in manager.exec_stream(lease, "echo first; sleep 1.5; echo second"):
        seen.append((time.monotonic() - started, item))
    first_at, first = seen[0]
    assert isinstance(first, OutputChunk) and first.data == b"first\n" and first_at < 1.2
    assert isinstance(seen[-1][1], ExecResult) and seen[-1][1].exit_code == 0


async def test_background_process_poll_wait_kill(manager: EnvManager, lease) -> None:
    counter = start_background(manager, lease, "for i in 1 2 3; do echo $i; sleep 0.3; done")
    first, _ = counter.stdout.read_from(0)  # what it printed so far (polled while it runs)
    assert counter.task is not None
    await asyncio.wait_for(asyncio.shield(counter.task), 10)
    result = counter.result()
    assert counter.status == "exited" and result is not None and result.exit_code == 0
    rest, dropped = counter.stdout.read_from(len(first))
    assert first + rest == b"1\n2\n3\n" and dropped == 0

    sleeper = start_background(manager, lease, "sleep 300")
    await until_listed(manager, lease, "sleep 300")
    await sleeper.kill()
    assert not sleeper.running and sleeper.status == "killed"
    assert "sleep 300" not in (await manager.exec(lease, "ps -o args")).stdout.text


async def test_cancelled_exec_kills_its_process(manager: EnvManager, lease) -> None:
    task = asyncio.create_task(manager.exec(lease, "sleep 303"))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "sleep 303" not in (await manager.exec(lease, "ps -o args")).stdout.text


async def test_tool_events_carry_program_and_duration(manager: EnvManager, lease) -> None:
    events: list[ToolEvent] = []

    async def listener(event: ToolEvent) -> None:
        events.append(event)

    manager.add_listener(listener)
    await manager.exec(lease, "sleep 0.3; exit 4", tool="sandbox_exec")
    start, end = events
    assert (start.kind, end.kind) == ("tool_start", "tool_end")
    assert start.program_id == end.program_id == "prog-exec" and start.call_id == end.call_id
    assert start.tool == "sandbox_exec" and end.exit_code == 4 and end.duration_s >= 0.3


async def test_bad_exec_arguments(manager: EnvManager, lease) -> None:
    for kwargs in ({"timeout_s": 0}, {"timeout_s": -1}, {"timeout_s": 10**9}):
        with pytest.raises(InvalidSpecError, match="timeout_s"):
            await manager.exec(lease, "true", **kwargs)
    with pytest.raises(InvalidSpecError):
        await manager.exec(lease, "   ")
    with pytest.raises(InvalidSpecError):
        await manager.exec(lease, [])
