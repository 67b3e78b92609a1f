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
class SandboxInfo:
    sandbox_id: str
    image: str
    state: str
    programs: tuple[str, ...]
    lease_count: int
    created_at: float
    last_used_at: float
    ports: tuple[PortBinding, ...] = field(default=())
    # How it came to be: "cold" (started on request), "warm" (from a pool), "prepared" (by prepare()),
    # "fork" (from a snapshot).
    origin: str = "cold"


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    snapshot_id: str
    image_id: str
    kind: Literal["snapshot", "template"]
    program_id: str  # who took it ("" for a template's)
    source_sandbox_id: str
    parent_snapshot_id: str | None  # the snapshot the source sandbox descends from, if any
    created_at: float
    holders: tuple[str, ...]  # "program:<id>", "sandbox:<id>" (forks, warm ones...), "template:<key>"


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Bytes on the engine's disk: ``unique`` are freed when this goes; ``shared`` are layers it reads
    that others read too (the image under a sandbox, the parents under a snapshot)."""

    kind: Literal["sandbox", "snapshot"]
    resource_id: str
    unique_bytes: int
    shared_bytes: int


@dataclass(frozen=True, slots=True)
class DiskReport:
    sandboxes: tuple[DiskUsage, ...]
    snapshots: tuple[DiskUsage, ...]
    # Per program: unique bytes of the sandboxes it leases and of the snapshots it holds.
    programs: dict[str, int]
    managed_bytes: int  # unique bytes of everything this manager owns (the budget's measure)
    engine_bytes: int  # the whole engine: every image layer once + every writable layer
    measured_at: float


@dataclass(frozen=True, slots=True)
class PoolInfo:
    key: str
    image: str
    warm: int
    starting: int
    target: int
    min_size: int
    max_size: int
    hits: int  # acquires served warm
    misses: int  # acquires that found the pool empty (served cold)
    discarded_dead: int  # warm sandboxes found dead and thrown away
    refill_s: float | None  # recent time to start one warm sandbox


@dataclass(frozen=True, slots=True)
class PrepareStats:
    requested: int = 0
    ready_at_acquire: int = 0  # the acquire found the environment ready: envs_prepared_ahead
    waited_at_acquire: int = 0  # the acquire came before it was ready and waited for it
    failed: int = 0
    expired: int = 0  # nobody acquired it within prepare_ttl_s
