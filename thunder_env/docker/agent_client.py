"""Talking to a sandbox's exec agent over its Unix socket: one connection per request.

The socket lives in a directory the sandbox can write, so it is opened with O_PATH|O_NOFOLLOW and
connected through /proc/self/fd: a symlink planted there can never redirect the manager to another
host socket, and every request names the sandbox it is meant for, which the agent checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import stat
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..agent import protocol as wire
from ..backend import ExecRequest
from ..errors import BackendError, CommandStartUnknownError
from ..output import HeadTailBuffer
from ..results import CapturedOutput, ExecResult, OutputChunk

CONNECT_TIMEOUT_S = 1.0
# From connecting to the agent's "started": it forks at once, so only a wedged agent takes this long.
START_TIMEOUT_S = 5.0
START_BYTES_PER_S = 32 << 20  # more time to hand over a large stdin
KILL_TIMEOUT_S = 10.0
# The agent enforces the command's timeout; past it plus this, the agent is presumed lost.
SILENCE_AFTER_TIMEOUT_S = 15.0
# A command the agent could not start ends like the Engine API's exec reports it.
NOT_STARTED_EXIT_CODE = 126


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    sandbox_id: str
    socket_path: str  # on the host
    user: str  # the sandbox's user, which the agent runs as


class AgentUnavailableError(BackendError):
    """The agent did not take the request; the command did not run, so another path may run it."""


class AgentNotListeningError(AgentUnavailableError):
    """Nothing listens on the agent's socket (not started yet, restarting, or gone)."""


class AgentUnresponsiveError(AgentUnavailableError):
    """The agent never read the request (stopped, wedged): the command did not start; stop using it."""


class AgentLostError(BackendError):
    """The agent stopped answering while the command ran; ``partial`` holds what was seen."""

    def __init__(self, message: str, partial: ExecResult) -> None:
        super().__init__(message)
        self.partial = partial


async def _connect(endpoint: AgentEndpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = f"exec agent of sandbox {endpoint.sandbox_id}"
    try:
        # A stat-sized syscall on a local directory: not worth a thread hop on the hot path.
        fd = os.open(endpoint.socket_path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AgentNotListeningError(f"{where}: no socket at {endpoint.socket_path} ({exc.strerror})") from exc
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise AgentNotListeningError(f"{where}: {endpoint.socket_path} is not a socket")
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
    except ConnectionRefusedError as exc:
        raise AgentNotListeningError(f"{where}: nothing listens on {endpoint.socket_path}") from exc
    except (OSError, TimeoutError) as exc:
        raise AgentUnavailableError(f"{where}: cannot connect ({exc!r})") from exc
    finally:
        os.close(fd)


async def _read_frame(reader: asyncio.StreamReader) -> wire.Frame:
    header = await reader.readexactly(wire.HEADER.size)
    kind, length = wire.HEADER.unpack(header)
    if length > wire.MAX_FRAME:
        raise wire.ProtocolError(f"frame of {length} bytes from the agent")
    return wire.Frame(kind, await reader.readexactly(length) if length else b"")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, asyncio.CancelledError):
        pass


async def _request(endpoint: AgentEndpoint, payload: bytes, expect: int, timeout_s: float) -> bytes:
    """A one-frame answer to a one-shot request (ping, kill)."""
    reader, writer = await _connect(endpoint)
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(payload)
            await writer.drain()
            frame = await _read_frame(reader)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, wire.ProtocolError) as exc:
        raise AgentUnavailableError(f"exec agent of sandbox {endpoint.sandbox_id}: no answer ({exc!r})") from exc
    finally:
        await _close(writer)
    if frame.kind == wire.RESP_FAILURE:
        failure = wire.decode_failure(frame.payload)
        raise AgentUnavailableError(f"exec agent of sandbox {endpoint.sandbox_id} refused: {failure.message}")
    if frame.kind != expect:
        raise AgentUnavailableError(f"exec agent of sandbox {endpoint.sandbox_id}: unexpected frame {frame.kind}")
    return frame.payload


async def agent_ping(endpoint: AgentEndpoint, timeout_s: float = 1.0) -> wire.Pong:
    pong = wire.decode_pong(await _request(endpoint, wire.encode_ping(endpoint.sandbox_id), wire.RESP_PONG, timeout_s))
    if pong.sandbox_id != endpoint.sandbox_id:
        raise AgentUnavailableError(f"the agent at {endpoint.socket_path} serves sandbox {pong.sandbox_id}")
    return pong


async def agent_kill(endpoint: AgentEndpoint, marker: str) -> int:
    """Kill every process of the sandbox whose environment carries the marker; returns how many."""
    payload = wire.encode_kill(endpoint.sandbox_id, marker)
    return wire.decode_killed(await _request(endpoint, payload, wire.RESP_KILLED, KILL_TIMEOUT_S))


async def agent_exec(
    endpoint: AgentEndpoint,
    request: ExecRequest,
    on_output: Callable[[OutputChunk], None] | None = None,
    on_started: Callable[[], None] | None = None,
) -> ExecResult:
    """Run a command through the agent.

    Raises AgentUnavailableError when the command did not start (safe to run it another way) and
    AgentLostError when the agent vanished mid-command. Cancelling closes the connection, on which
    the agent kills the command's tree.
    """
    started = time.monotonic()
    try:
        payload = wire.encode_run(
            endpoint.sandbox_id,
            request.argv,
            request.env,
            request.marker,
            request.workdir,
            request.timeout_s,
            request.stdin,
        )
    except (wire.ProtocolError, UnicodeError) as exc:
        raise AgentUnavailableError(f"the request does not fit the agent protocol: {exc}") from exc
    stdout = HeadTailBuffer(request.output_limit)
    stderr = HeadTailBuffer(request.output_limit)
    reader, writer = await _connect(endpoint)
    try:
        try:
            async with asyncio.timeout(START_TIMEOUT_S + len(payload) / START_BYTES_PER_S):
                writer.write(payload)
                await writer.drain()
                first = await _read_frame(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, wire.ProtocolError) as exc:
            # The agent starts a command only once it has read all of its request: while some of it
            # is still unread the command certainly did not start, and another path may run it.
            # Otherwise it may have started: running it again could do its work twice.
            # Shut our side first: from then on the agent refuses the request (it checks for the
            # hang-up before it forks), so bytes still unread now can never start the command.
            _shut_write(writer)
            if _unread_bytes(writer) > 0:
                raise AgentUnresponsiveError(
                    f"exec agent of sandbox {endpoint.sandbox_id} did not read the command ({exc!r})"
                ) from exc
            raise CommandStartUnknownError(
                endpoint.sandbox_id, f"its exec agent took the command but did not confirm its start: {exc!r}"
            ) from exc
        if first.kind == wire.RESP_FAILURE:
            failure = wire.decode_failure(first.payload)
            if failure.kind in (wire.FAIL_CHDIR, wire.FAIL_EXEC):
                return _not_started(failure, started)
            raise AgentUnavailableError(
                f"exec agent of sandbox {endpoint.sandbox_id} refused the command: {failure.name}: {failure.message}"
            )
        if first.kind != wire.RESP_STARTED:
            raise AgentUnavailableError(f"exec agent of sandbox {endpoint.sandbox_id} sent frame {first.kind} first")
        # From here on the command runs: it must never be started a second time elsewhere.
        if on_started is not None:
            on_started()
        silence = None if request.timeout_s is None else request.timeout_s + SILENCE_AFTER_TIMEOUT_S
        try:
            async with asyncio.timeout(silence):
                status = await _pump(reader, stdout, stderr, on_output)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, wire.ProtocolError) as exc:
            partial = _result(None, stdout, stderr, started, timed_out=isinstance(exc, TimeoutError))
            raise AgentLostError(
                f"exec agent of sandbox {endpoint.sandbox_id} stopped answering mid-command ({exc!r})", partial
            ) from exc
    finally:
        await asyncio.shield(_close(writer))
    return _result(status.code, stdout, stderr, started, timed_out=status.timed_out)


def _shut_write(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def _unread_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes of our request the peer has not read yet: still in our buffer or in the socket's queue.

    On a Unix stream socket SIOCOUTQ (TIOCOUTQ) counts what the receiver has not consumed; 0 when
    it cannot be told (a closed socket), which callers take as "may have been read"."""
    pending = writer.transport.get_write_buffer_size()
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return pending
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return pending
    return pending + int(queued)


async def _pump(
    reader: asyncio.StreamReader,
    stdout: HeadTailBuffer,
    stderr: HeadTailBuffer,
    on_output: Callable[[OutputChunk], None] | None,
) -> wire.ExitStatus:
    while True:
        frame = await _read_frame(reader)
        if frame.kind == wire.RESP_STDOUT or frame.kind == wire.RESP_STDERR:
            name = "stdout" if frame.kind == wire.RESP_STDOUT else "stderr"
            (stdout if name == "stdout" else stderr).feed(frame.payload)
            if on_output is not None:
                on_output(OutputChunk(name, frame.payload))
        elif frame.kind == wire.RESP_EXIT:
            return wire.decode_exit(frame.payload)
        else:
            raise wire.ProtocolError(f"unexpected frame {frame.kind} while the command runs")


def _result(
    code: int | None, stdout: HeadTailBuffer, stderr: HeadTailBuffer, started: float, timed_out: bool
) -> ExecResult:
    return ExecResult(
        exit_code=code,
        stdout=stdout.result(),
        stderr=stderr.result(),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
    )


def _not_started(failure: wire.Failure, started: float) -> ExecResult:
    message = f"thunder-agent: {failure.message}\n".encode()
    return ExecResult(
        exit_code=NOT_STARTED_EXIT_CODE,
        stdout=CapturedOutput(b"", 0, False),
        stderr=CapturedOutput(message, len(message), False),
        duration_s=time.monotonic() - started,
    )
