"""The agent binary itself, run on the host (no Docker): protocol edge cases, kills, supervision.

Needs gcc and the static libc (make install provides them); a missing compiler fails with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from thunder_env.agent import protocol as wire
from thunder_env.agent.build import ensure_agent_binary
from thunder_env.backend import ExecRequest
from thunder_env.docker import agent_client
from thunder_env.docker.agent_client import (
    AgentEndpoint,
    AgentUnavailableError,
    AgentUnresponsiveError,
    agent_exec,
    agent_kill,
    agent_ping,
)
from thunder_env.errors import CommandStartUnknownError


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(ensure_agent_binary(tmp_path_factory.mktemp("agent-cache")))


@pytest.fixture
def socket_dir(tmp_path: Path) -> Path:
    # Short: Unix socket paths are limited to 107 bytes.
    return tmp_path


def _start(binary: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(binary), *args], stderr=subprocess.DEVNULL)


async def _until_pong(endpoint: AgentEndpoint, not_pid: int = -1) -> wire.Pong:
    deadline = time.monotonic() + 5
    while True:
        try:
            pong = await agent_ping(endpoint)
            if pong.pid != not_pid:
                return pong
        except AgentUnavailableError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)


@pytest.fixture
async def endpoint(binary: Path, socket_dir: Path) -> AsyncIterator[AgentEndpoint]:
    server = _start(binary, "serve", str(socket_dir / "agent.sock"), "sb-local")
    endpoint = AgentEndpoint("sb-local", str(socket_dir / "agent.sock"), "")
    try:
        await _until_pong(endpoint)
        yield endpoint
    finally:
        server.kill()
        server.wait()


def request(argv: list[str], **kwargs: object) -> ExecRequest:
    return ExecRequest(argv=argv, marker="test-" + secrets.token_hex(8), **kwargs)  # type: ignore[arg-type]


def marked(marker: str) -> list[int]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(wire.MARKER_VAR) == marker:
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


async def until_marked(marker: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(marked(marker)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} processes marked {marker}"
        await asyncio.sleep(0.02)


async def until_gone(marker: str) -> None:
    deadline = time.monotonic() + 3
    while marked(marker):
        assert time.monotonic() < deadline, f"processes marked {marker} survived: {marked(marker)}"
        await asyncio.sleep(0.05)


async def test_ping_checks_identity_and_protocol(endpoint: AgentEndpoint) -> None:
    pong = await agent_ping(endpoint)
    assert pong.version == wire.PROTOCOL_VERSION and pong.sandbox_id == "sb-local" and pong.pid > 0
    with pytest.raises(AgentUnavailableError, match="another sandbox"):
        await agent_ping(AgentEndpoint("sb-other", endpoint.socket_path, ""))
    reader, writer = await asyncio.open_unix_connection(endpoint.socket_path)
    writer.write(wire.encode_frame(wire.REQ_RUN))  # no hello first
    frames = wire.FrameDecoder().feed(await reader.read())
    writer.close()
    assert frames[0].kind == wire.RESP_FAILURE and wire.decode_failure(frames[0].payload).name == "protocol"


async def test_run_streams_env_workdir_stdin(endpoint: AgentEndpoint) -> None:
    chunks = []
    result = await agent_exec(
        endpoint,
        request(
            ["/bin/sh", "-c", 'echo "$FOO $THUNDER_EXEC_ID" | cut -c1-8; pwd; cat; echo err >&2; exit 5'],
            env={"FOO": "bar"},
            workdir="/tmp",
            stdin=b"in",
        ),
        chunks.append,
    )
    assert result.exit_code == 5 and result.stdout.data == b"bar test\n/tmp\nin" and result.stderr.data == b"err\n"
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == result.stdout.data
    # PATH is looked up in the command's environment, as the Engine API's exec does.
    missing = await agent_exec(endpoint, request(["ls"], env={"PATH": "/nonexistent"}))
    assert missing.exit_code == 126 and "executable file not found" in missing.stderr.text
    big = await agent_exec(endpoint, request(["/bin/sh", "-c", "head -c 20000000 /dev/zero"], output_limit=1000))
    assert big.stdout.total_bytes == 20_000_000 and big.stdout.truncated


async def test_exit_does_not_wait_for_background_children(endpoint: AgentEndpoint) -> None:
    req = request(["/bin/sh", "-c", "sleep 30 & echo hi"])
    started = time.monotonic()
    result = await agent_exec(endpoint, req)
    assert result.stdout.text == "hi\n" and time.monotonic() - started < 1.5
    assert await agent_kill(endpoint, req.marker) == 1
    await until_gone(req.marker)


async def test_timeout_kills_group_and_escaped_children(endpoint: AgentEndpoint) -> None:
    req = request(["/bin/sh", "-c", "sleep 300 & setsid sleep 301 & sleep 302"], timeout_s=0.5)
    result = await agent_exec(endpoint, req)
    assert result.timed_out and result.exit_code == 137
    await until_gone(req.marker)


async def test_kill_request_and_disconnect_kill_the_tree(endpoint: AgentEndpoint) -> None:
    req = request(["/bin/sh", "-c", "setsid sleep 303 & sleep 304"])
    task = asyncio.create_task(agent_exec(endpoint, req))
    await until_marked(req.marker, 2)
    assert await agent_kill(endpoint, req.marker) >= 2
    assert (await task).exit_code == 137
    await until_gone(req.marker)

    req = request(["/bin/sh", "-c", "setsid sleep 305 & sleep 306"])
    task = asyncio.create_task(agent_exec(endpoint, req))
    await until_marked(req.marker, 2)
    task.cancel()  # the client hangs up: the agent kills what it started
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_gone(req.marker)


async def test_supervisor_restarts_the_server_and_stops_on_sigterm(binary: Path, socket_dir: Path) -> None:
    path = socket_dir / "agent.sock"
    supervisor = _start(binary, "supervise", str(path), "sb-sup")
    endpoint = AgentEndpoint("sb-sup", str(path), "")
    try:
        first = await _until_pong(endpoint)
        os.kill(first.pid, signal.SIGKILL)
        second = await _until_pong(endpoint, not_pid=first.pid)
        # Someone removes the socket: the server listens again on its own.
        await asyncio.to_thread(path.unlink)
        third = await _until_pong(endpoint)
        assert third.pid == second.pid
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 5) == 0
    finally:
        supervisor.kill()
        supervisor.wait()


async def test_supervisor_runs_and_ends_with_the_sandbox_command(binary: Path, socket_dir: Path) -> None:
    supervisor = _start(binary, "supervise", str(socket_dir / "agent.sock"), "sb-cmd", "--", "sh", "-c", "exit 7")
    try:
        assert await asyncio.to_thread(supervisor.wait, 5) == 7
    finally:
        supervisor.kill()


def test_usage_errors(binary: Path) -> None:
    for args in ([], ["serve"], ["nonsense", "a", "b"], ["supervise", "s", "id", "--"]):
        assert subprocess.run([str(binary), *args], capture_output=True).returncode == 2


@pytest.fixture(autouse=True)
def _no_stray_processes() -> Iterator[None]:
    yield
    # Every test kills what it started; a test- marker still alive here is a leak.
    strays = [p for p in psutil.process_iter() if _marker_of(p).startswith("test-")]
    assert not strays, strays


def _marker_of(process: psutil.Process) -> str:
    try:
        return process.environ().get(wire.MARKER_VAR, "")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


async def test_a_stopped_agent_never_runs_the_command_it_did_not_read(
    endpoint: AgentEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP: the request stays unread, so the client may run the command another way; once the
    agent resumes it must not run it too (it sees the client's hang-up before it forks)."""
    monkeypatch.setattr(agent_client, "START_TIMEOUT_S", 0.3)
    agent_pid = (await agent_ping(endpoint)).pid
    target = tmp_path / "appended"
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        with pytest.raises(AgentUnresponsiveError, match="did not read"):
            await agent_exec(endpoint, request(["/bin/sh", "-c", f"echo once >> {target}"]))
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    await _until_pong(endpoint)  # it has handled everything queued before the ping
    assert not target.exists(), "the agent ran a request its client had given up on"
    result = await agent_exec(endpoint, request(["/bin/sh", "-c", f"echo once >> {target}"]))
    assert result.exit_code == 0 and target.read_text() == "once\n"


async def test_a_request_read_but_never_confirmed_is_reported_as_maybe_started(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that read the whole request and went silent may have started it: no fallback allowed."""
    monkeypatch.setattr(agent_client, "START_TIMEOUT_S", 0.3)
    received = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        received.set()
        await reader.read()  # until the client hangs up, answering nothing
        writer.close()

    path = str(socket_dir / "silent.sock")
    server = await asyncio.start_unix_server(silent, path)
    try:
        with pytest.raises(CommandStartUnknownError, match="may or may not have started"):
            await agent_exec(AgentEndpoint("sb-silent", path, ""), request(["/bin/true"]))
        assert received.is_set()
    finally:
        server.close()
        await server.wait_closed()
