"""Running commands in Docker sandboxes: through the sandbox's agent, else the Engine API's exec endpoints."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import io
import json
import logging
import time

import aiohttp
from aiodocker.stream import Stream

from ..backend import ExecRequest, OutputCallback
from ..errors import BackendError, CommandStartUnknownError, FileOperationError, FileTooLargeError
from ..output import HeadTailBuffer
from ..results import ExecResult, OutputChunk
from .agent_client import AgentLostError
from .agent_support import ExecAgents
from .clients import DockerClients
from .errors import engine_errors
from .lifecycle import container_name

log = logging.getLogger(__name__)

MARKER_VAR = "THUNDER_EXEC_ID"
# After a kill, output still in flight is read for at most this long.
DRAIN_AFTER_KILL_S = 2.0
OOM_EXIT_CODE = 137
# A bounded archive read may pass the content limit by this much: tar headers (PAX ones for long
# names), padding to 512-byte blocks and the two end blocks.
ARCHIVE_OVERHEAD_BYTES = 64 << 10
_PATH_STAT_HEADER = "X-Docker-Container-Path-Stat"
# Go's os.ModeType (dir, symlink, device, named pipe, socket, char device, irregular): a regular file
# has none of these bits.
_GO_MODE_TYPE = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)

# Kills every process whose environment carries the marker: the command and all it spawned,
# whatever process group or session they moved to. Runs twice to catch forks racing the first pass.
_KILL_SCRIPT = r"""
for round in 1 2; do
  for d in /proc/[0-9]*; do
    case "$(tr '\0' '\n' < "$d/environ" 2>/dev/null)" in
      *"THUNDER_EXEC_ID=$1"*) kill -9 "${d#/proc/}" 2>/dev/null ;;
    esac
  done
done
"""

# cgroup v2 then v1: the kernel's count of OOM kills in the sandbox's memory cgroup.
_OOM_COUNT_SCRIPT = (
    "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null | "
    "grep '^oom_kill ' || true"
)


class DockerExecution:
    """Commands and archives: the control client for inspect and the killer exec, the stream client for
    command output and archives; the sandbox's agent first where it has one."""

    def __init__(self, clients: DockerClients, agents: ExecAgents) -> None:
        self._docker = clients.control
        self._streams = clients.streams
        self._agents = agents
        self._oom_counts: dict[str, int] = {}  # sandbox -> OOM kills seen so far

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is gone: drop what was kept for it."""
        self._oom_counts.pop(sandbox_id, None)

    async def exec(
        self, sandbox_id: str, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        try:
            result = await self._agents.exec(sandbox_id, request, on_output)
        except AgentLostError as exc:
            if self._agents.socket(sandbox_id) is None:
                return exc.partial  # the sandbox was destroyed under the command: nothing left to kill
            # The command may still run with nobody reading it: kill it; what it printed is kept.
            log.warning("%s; its processes are killed and the result has no exit code", exc)
            await asyncio.shield(self._kill_quietly(sandbox_id, request))
            return exc.partial
        except CommandStartUnknownError:
            # It may run: stop it (through the Engine API, the agent is given up on) and never rerun it.
            await asyncio.shield(self._kill_quietly(sandbox_id, request))
            raise
        except asyncio.CancelledError:
            # The agent kills the tree when the connection drops; this also covers a wedged agent.
            await asyncio.shield(self._kill_quietly(sandbox_id, request))
            raise
        if result is None:
            return await self._engine_exec(sandbox_id, request, on_output)
        if result.exit_code == OOM_EXIT_CODE and not result.timed_out and await self._oom_happened(sandbox_id):
            result = dataclasses.replace(result, oom_killed=True)
        return result

    async def _engine_exec(
        self, sandbox_id: str, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        started = time.monotonic()
        stdout = HeadTailBuffer(request.output_limit)
        stderr = HeadTailBuffer(request.output_limit)
        env = dict(request.env)
        env[MARKER_VAR] = request.marker
        container = self._streams.containers.container(container_name(sandbox_id))
        async with engine_errors(sandbox_id):
            execution = await container.exec(
                list(request.argv),
                stdin=request.stdin is not None,
                environment=env,
                workdir=request.workdir,
                user=request.user,
            )
        stream: Stream = execution.start(detach=False)
        timed_out = False
        try:
            async with engine_errors(sandbox_id):
                await stream._init()
                if request.stdin is not None:
                    await _send_stdin(stream, request.stdin)
                try:
                    async with asyncio.timeout(request.timeout_s):
                        await _pump(stream, stdout, stderr, on_output)
                except TimeoutError:
                    timed_out = True
                    await self.kill_marked(sandbox_id, request.marker, request.user)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DRAIN_AFTER_KILL_S):
                            await _pump(stream, stdout, stderr, on_output)
        except asyncio.CancelledError:
            # The caller gave up (client cancelled): the command must not run on unseen.
            await asyncio.shield(self._kill_quietly(sandbox_id, request))
            raise
        finally:
            await stream.close()
        exit_code = await self._exit_code(execution.id, sandbox_id)
        oom = exit_code == OOM_EXIT_CODE and not timed_out and await self._oom_happened(sandbox_id)
        return ExecResult(
            exit_code=exit_code,
            stdout=stdout.result(),
            stderr=stderr.result(),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            oom_killed=oom,
        )

    async def kill_marked(self, sandbox_id: str, marker: str, user: str = "") -> None:
        # Run as the command's own user: without CAP_SYS_PTRACE, root cannot read another
        # user's /proc/PID/environ, but a user can read (and kill) its own processes.
        # The agent (which runs as the sandbox's user) kills without forking: it works at the pids limit.
        if await self._agents.kill(sandbox_id, marker, user):
            return
        container = self._docker.containers.container(container_name(sandbox_id))
        for attempt in range(5):
            try:
                async with engine_errors(sandbox_id):
                    killer = await container.exec(["/bin/sh", "-c", _KILL_SCRIPT, "kill", marker], user=user)
                    await killer.start(detach=True)
                    await self._exit_code(killer.id, sandbox_id)
                return
            except BackendError:
                # A sandbox at its pids limit cannot start the killer yet: retry briefly.
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))

    async def get_archive(self, sandbox_id: str, path: str, max_bytes: int | None = None) -> bytes:
        container = self._streams.containers.container(container_name(sandbox_id))
        try:
            async with engine_errors(sandbox_id):
                async with self._streams._query(
                    f"containers/{container.id}/archive", method="GET", params={"path": path}
                ) as response:
                    try:
                        if max_bytes is None:
                            return await response.read()
                        size = _regular_file_size(response.headers.get(_PATH_STAT_HEADER, ""))
                        if size is not None and size > max_bytes:
                            raise FileTooLargeError(path, max_bytes, size)  # before a byte of it is read
                        return await _read_bounded(response.content, path, max_bytes)
                    finally:
                        # An early exit leaves the body unread: drop the connection, the engine stops sending.
                        response.close()
        except BackendError as exc:
            if exc.status == 404:
                raise FileOperationError(path, "no such file or directory") from exc
            raise

    async def put_archive(self, sandbox_id: str, dest_dir: str, data: bytes) -> None:
        container = self._streams.containers.container(container_name(sandbox_id))
        try:
            async with engine_errors(sandbox_id):
                async with self._streams._query(
                    f"containers/{container.id}/archive",
                    method="PUT",
                    data=data,
                    headers={"Content-Type": "application/x-tar"},
                    params={"path": dest_dir},
                ):
                    pass
        except BackendError as exc:
            if exc.status == 404:
                raise FileOperationError(dest_dir, "destination directory does not exist") from exc
            if exc.status in (400, 403, 500):
                raise FileOperationError(dest_dir, f"cannot write: {exc}") from exc
            raise

    async def _kill_quietly(self, sandbox_id: str, request: ExecRequest) -> None:
        with contextlib.suppress(Exception):
            await self.kill_marked(sandbox_id, request.marker, request.user)

    async def _exit_code(self, exec_id: str, sandbox_id: str) -> int | None:
        # The stream can end a moment before the engine records the exit code: poll briefly,
        # starting with very short waits since the gap is usually under a millisecond.
        delay = 0.0005
        for _ in range(40):
            async with engine_errors(sandbox_id):
                info = await self._docker._query_json(f"exec/{exec_id}/json", method="GET")
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return None

    async def _oom_happened(self, sandbox_id: str) -> bool:
        request = ExecRequest(argv=["/bin/sh", "-c", _OOM_COUNT_SCRIPT], marker="oom-check", output_limit=4096)
        try:
            result = await self.exec(sandbox_id, request)
        except BackendError:
            return False
        count = 0
        for line in io.StringIO(result.stdout.text):
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                count = max(count, int(parts[1]))
        previous = self._oom_counts.get(sandbox_id, 0)
        self._oom_counts[sandbox_id] = count
        return count > previous


async def _pump(
    stream: Stream, stdout: HeadTailBuffer, stderr: HeadTailBuffer, on_output: OutputCallback | None
) -> None:
    while True:
        message = await stream.read_out()
        if message is None:
            return
        name = "stdout" if message.stream == 1 else "stderr"
        (stdout if name == "stdout" else stderr).feed(message.data)
        if on_output is not None:
            on_output(OutputChunk(name, message.data))


def _regular_file_size(header: str) -> int | None:
    """The size the engine reports for a regular file in the archive's stat header, else None."""
    try:
        stat = json.loads(base64.b64decode(header, validate=False)) if header else None
    except (binascii.Error, ValueError):
        return None
    if not isinstance(stat, dict) or not isinstance(stat.get("size"), int) or not isinstance(stat.get("mode"), int):
        return None
    return None if stat["mode"] & _GO_MODE_TYPE else int(stat["size"])


async def _read_bounded(content: aiohttp.StreamReader, path: str, max_bytes: int) -> bytes:
    """The whole body, unless it passes ``max_bytes`` plus the tar overhead: then an error, nothing more read."""
    limit = max_bytes + ARCHIVE_OVERHEAD_BYTES
    chunks: list[bytes] = []
    total = 0
    async for chunk in content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > limit:
            raise FileTooLargeError(path, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def _send_stdin(stream: Stream, data: bytes) -> None:
    await stream.write_in(data)
    # Half-close so the command sees EOF on stdin while we keep reading its output.
    # aiodocker's Stream.close() would drop the read side too, hence the transport.
    response = stream._resp
    transport = response.connection.transport if response and response.connection else None
    if transport is not None and transport.can_write_eof():
        transport.write_eof()
