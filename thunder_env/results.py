"""Value types returned by sandbox operations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class CapturedOutput:
    """One output stream, possibly cut in the middle (head and tail kept)."""

    data: bytes
    total_bytes: int
    truncated: bool

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int | None
    stdout: CapturedOutput
    stderr: CapturedOutput
    duration_s: float
    timed_out: bool = False
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: StreamName
    data: bytes


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    path: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class PortBinding:
    sandbox_id: str
    container_port: int
    host: str
    host_port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.host_port}"


@dataclass(frozen=True, slots=True)
class ProcessOutput:
    """What a background process printed since the given offsets, and whether it has finished.

    Pass ``next_stdout_offset`` / ``next_stderr_offset`` back to get only newer output; bytes that fell
    out of the bounded buffer in between are counted in ``dropped_bytes``.
    """

    process_id: str
    stdout: bytes
    stderr: bytes
    next_stdout_offset: int
    next_stderr_offset: int
    dropped_bytes: int
    running: bool
    exit_code: int | None
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    sandbox_id: str
    image: str
    state: str
    programs: tuple[str, ...]
    lease_count: int
    created_at: float
    last_used_at: float
    ports: tuple[PortBinding, ...] = field(default=())
