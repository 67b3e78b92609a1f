"""The agent's wire protocol: frames of 1 type byte + 4-byte big-endian length + payload.

One connection carries one request. A run request is hello, argv, env, workdir, timeout, stdin
chunks, stdin end, run; the agent answers started, output frames as they come, then exit (or a
failure frame if the command could not start). Kill and ping requests are a hello and one frame.
The C side (agent.c) mirrors these constants.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..errors import EnvError

PROTOCOL_VERSION = 1
MARKER_VAR = "THUNDER_EXEC_ID"
HEADER = struct.Struct(">BI")
MAX_FRAME = 8 << 20  # the agent refuses bigger frames
STDIN_CHUNK = 1 << 20
MAX_STDIN = 256 << 20  # the agent buffers stdin before the command starts; bigger goes the engine's way

# Requests (client -> agent).
REQ_HELLO = ord("H")
REQ_ARG = ord("A")
REQ_ENV = ord("V")
REQ_WORKDIR = ord("W")
REQ_TIMEOUT = ord("T")
REQ_STDIN = ord("I")
REQ_STDIN_END = ord("Z")
REQ_RUN = ord("R")
REQ_KILL = ord("K")
REQ_PING = ord("P")

# Responses (agent -> client).
RESP_STARTED = ord("S")
RESP_STDOUT = ord("O")
RESP_STDERR = ord("E")
RESP_EXIT = ord("X")
RESP_FAILURE = ord("F")
RESP_PONG = ord("Q")
RESP_KILLED = ord("D")

# Failure kinds: why a command did not start.
FAIL_PROTOCOL = 1
FAIL_IDENTITY = 2
FAIL_FORK = 3
FAIL_CHDIR = 4
FAIL_EXEC = 5
FAIL_TOO_LARGE = 6
FAIL_INTERNAL = 7
FAILURE_NAMES = {
    FAIL_PROTOCOL: "protocol",
    FAIL_IDENTITY: "identity",
    FAIL_FORK: "fork",
    FAIL_CHDIR: "chdir",
    FAIL_EXEC: "exec",
    FAIL_TOO_LARGE: "too_large",
    FAIL_INTERNAL: "internal",
}


class ProtocolError(EnvError, ValueError):
    """Bytes that are not a valid frame sequence, or a request the protocol cannot carry."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    payload: bytes = b""


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(kind, len(payload)) + payload


class FrameDecoder:
    """Incremental: feed bytes as they arrive, get every frame completed so far."""

    def __init__(self, max_payload: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise ProtocolError(f"frame of {length} bytes exceeds {self._max}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(kind, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buffer)


def _text(value: str, what: str) -> bytes:
    data = value.encode("utf-8", errors="surrogateescape")
    if b"\0" in data:
        raise ProtocolError(f"{what} contains a NUL byte")
    return data


def hello(sandbox_id: str) -> bytes:
    return encode_frame(REQ_HELLO, bytes([PROTOCOL_VERSION]) + _text(sandbox_id, "sandbox id"))


def encode_run(
    sandbox_id: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    marker: str,
    workdir: str | None = None,
    timeout_s: float | None = None,
    stdin: bytes | None = None,
) -> bytes:
    """One run request; the marker is added to the environment so the tree can be found and killed."""
    if not argv:
        raise ProtocolError("argv is empty")
    if stdin is not None and len(stdin) > MAX_STDIN:
        raise ProtocolError(f"stdin of {len(stdin)} bytes exceeds the agent's {MAX_STDIN}")
    parts = [hello(sandbox_id)]
    parts += [encode_frame(REQ_ARG, _text(arg, "an argv element")) for arg in argv]
    for key, value in {**env, MARKER_VAR: marker}.items():
        if not key or "=" in key:
            raise ProtocolError(f"invalid environment variable name {key!r}")
        parts.append(encode_frame(REQ_ENV, _text(f"{key}={value}", "an env entry")))
    if workdir:
        parts.append(encode_frame(REQ_WORKDIR, _text(workdir, "workdir")))
    if timeout_s is not None:
        parts.append(encode_frame(REQ_TIMEOUT, struct.pack(">Q", max(1, math.ceil(timeout_s * 1000)))))
    if stdin is not None:
        parts += [encode_frame(REQ_STDIN, chunk) for chunk in _chunks(stdin)]
        parts.append(encode_frame(REQ_STDIN_END))
    parts.append(encode_frame(REQ_RUN))
    return b"".join(parts)


def encode_kill(sandbox_id: str, marker: str) -> bytes:
    return hello(sandbox_id) + encode_frame(REQ_KILL, _text(marker, "marker"))


def encode_ping(sandbox_id: str) -> bytes:
    return hello(sandbox_id) + encode_frame(REQ_PING)


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), STDIN_CHUNK):
        yield data[start : start + STDIN_CHUNK]


# ------------------------------------------------------------------------------ decoding answers


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int
    timed_out: bool


@dataclass(frozen=True, slots=True)
class Failure:
    kind: int
    message: str

    @property
    def name(self) -> str:
        return FAILURE_NAMES.get(self.kind, f"unknown-{self.kind}")


@dataclass(frozen=True, slots=True)
class Pong:
    version: int
    pid: int
    sandbox_id: str


def _exact(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{what} frame of {len(payload)} bytes, expected {size}")


def decode_started(payload: bytes) -> int:
    _exact(payload, 4, "started")
    return int(struct.unpack(">I", payload)[0])


def decode_exit(payload: bytes) -> ExitStatus:
    _exact(payload, 5, "exit")
    code, timed_out = struct.unpack(">iB", payload)
    return ExitStatus(code=code, timed_out=bool(timed_out))


def decode_failure(payload: bytes) -> Failure:
    if not payload:
        raise ProtocolError("empty failure frame")
    return Failure(kind=payload[0], message=payload[1:].decode("utf-8", errors="replace"))


def decode_pong(payload: bytes) -> Pong:
    if len(payload) < 5:
        raise ProtocolError("short pong frame")
    version, pid = struct.unpack_from(">BI", payload)
    return Pong(version=version, pid=pid, sandbox_id=payload[5:].decode("utf-8", errors="replace"))


def decode_killed(payload: bytes) -> int:
    _exact(payload, 4, "killed")
    return int(struct.unpack(">I", payload)[0])
