"""The seam between the manager and a sandbox engine: what every backend must do, and what one may add.

Required (``SandboxBackend``): lifecycle (create, destroy, find and remove what is ours) kept apart from
operations (exec, archives), so a second engine reuses the operations API and the manager never knows
which engine it drives. Optional capabilities (snapshots, disk accounting, a host-local agent) are
protocols of their own: a backend declares the ones it has in ``capabilities``, and the manager checks
them once (capabilities.py) instead of probing attributes on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from .results import ExecResult, OutputChunk
from .spec import SandboxSpec

OutputCallback = Callable[[OutputChunk], None]


@dataclass(frozen=True, slots=True)
class BackendSandbox:
    sandbox_id: str
    backend_id: str  # the backend's own name for it (a container id on Docker)
    address: str | None  # reachable IP of the sandbox from the host, None without a network


@dataclass(frozen=True, slots=True)
class ManagedResource:
    """Something a manager created, found by its labels (used by reconcile)."""

    kind: str  # "container" | "image" | "network"
    resource_id: str
    labels: Mapping[str, str]
    state: str | None = None  # a container's engine state ("running", "exited"...), if the engine says


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: Sequence[str]
    marker: str  # unique token placed in the process environment to find (and kill) its tree
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str = ""
    stdin: bytes | None = None
    timeout_s: float | None = None
    output_limit: int = 1 << 20


class SandboxLifecycle(Protocol):
    async def create(self, sandbox_id: str, spec: SandboxSpec, labels: Mapping[str, str]) -> BackendSandbox:
        """Create and start a sandbox; on any failure nothing is left behind."""

    async def destroy(self, sandbox_id: str) -> None:
        """Remove the sandbox and its writable layer. Idempotent."""

    async def is_running(self, sandbox_id: str) -> bool: ...

    async def list_managed(self, labels: Mapping[str, str]) -> list[ManagedResource]: ...

    async def remove_managed(self, resource: ManagedResource) -> None: ...

    async def retry_removals(self) -> list[str]:
        """Remove again what the backend made beside sandboxes (networks) and failed to remove once
        nothing used it; returns what is still left."""


class SandboxOperations(Protocol):
    async def exec(
        self, sandbox_id: str, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        """Run a command to completion or timeout. Cancellation kills the command's process tree."""

    async def kill_marked(self, sandbox_id: str, marker: str, user: str = "") -> None:
        """Kill every process of the sandbox whose environment carries ``marker``."""

    async def get_archive(self, sandbox_id: str, path: str, max_bytes: int | None = None) -> bytes:
        """A tar of ``path`` (file or directory) from the sandbox.

        With ``max_bytes``, never holds more than about that much: a path whose content passes it raises
        ``FileTooLargeError`` (from the path's size before any transfer where the engine reports it, else
        once the bytes streamed pass ``max_bytes`` plus the tar headers' overhead).
        """

    async def put_archive(self, sandbox_id: str, dest_dir: str, data: bytes) -> None:
        """Extract a tar into ``dest_dir`` of the sandbox."""


@dataclass(frozen=True, slots=True)
class EngineImageUsage:
    image_id: str
    size: int  # every layer the image reads, its parents' included
    shared_size: int  # the part of ``size`` in layers other images use too
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EngineContainerUsage:
    container_id: str
    size_rw: int  # the container's own writable layer
    size_root_fs: int  # writable layer + the image layers under it
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EngineDiskUsage:
    """The engine's own size data: every image layer once, and each sandbox's writable layer."""

    layers_size: int  # every image layer, counted once
    images: tuple[EngineImageUsage, ...]
    containers: tuple[EngineContainerUsage, ...]

    @property
    def total_bytes(self) -> int:
        return self.layers_size + sum(c.size_rw for c in self.containers)


class Capability(StrEnum):
    """An optional part of the seam a backend may declare (see ``SandboxBackend.capabilities``)."""

    SNAPSHOTS = "snapshots"  # SnapshotSupport: snapshot, fork, templates with setup steps
    DISK_ACCOUNTING = "disk_accounting"  # DiskAccounting: disk usage, disk budget and limits, host reserves
    HOST_AGENT = "host_agent"  # HostLocalAgent: per-sandbox host directories reconcile must clean


@runtime_checkable
class SnapshotSupport(Protocol):
    """Snapshots as image layers: a commit adds one layer on its parent's, shared by every child."""

    async def commit(self, sandbox_id: str, snapshot_ref: str, labels: Mapping[str, str], pause: bool) -> str:
        """Capture the sandbox's filesystem as image ``snapshot_ref`` (repo:tag); returns the image id."""

    async def remove_image(self, image_ref: str) -> bool:
        """Remove an image (its untagged parents go with it). False if it was already gone."""


@runtime_checkable
class DiskAccounting(Protocol):
    """The engine's own size data, and where its disks live."""

    @property
    def enforces_disk_limit(self) -> bool | None:
        """Whether the backend itself caps a sandbox's writable layer (None: not known yet); where it
        does not, the manager measures the layers with ``disk_usage`` and stops a sandbox past its limit."""

    async def disk_usage(self) -> EngineDiskUsage: ...

    async def storage_path(self) -> str | None:
        """Host path under which the engine stores sandbox disks, if it is on this host."""


@runtime_checkable
class HostLocalAgent(Protocol):
    """Per-sandbox state on this host (an exec agent's socket directories) that outlives a dead manager."""

    async def remove_orphan_dirs(self, namespace: str, live_sandbox_ids: Collection[str]) -> list[str]:
        """Remove host directories the backend made for sandboxes of ``namespace`` that are gone
        (and whose maker is dead); returns their sandbox ids."""


class SandboxBackend(SandboxLifecycle, SandboxOperations, Protocol):
    """What every backend implements. Optional parts: declared in ``capabilities``, each one's protocol
    implemented by the backend object itself."""

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    async def close(self) -> None: ...
