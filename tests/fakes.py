"""Test doubles shared by the unit tests (the Docker and vLLM tiers run the real things).

``MemoryBackend`` implements the required ``SandboxBackend`` seam in memory: sandboxes are entries in a
dict, a command is answered by ``script`` (default: a handful of shell words), archives are kept as
given. Its optional capabilities are whatever the test declares (snapshots and disk accounting by
default, so a manager with the default config starts on it); the methods of every capability exist,
so a test can show that the manager goes by the declaration, not by what it can find.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from thunder_env.backend import (
    BackendSandbox,
    Capability,
    EngineContainerUsage,
    EngineDiskUsage,
    EngineImageUsage,
    ExecRequest,
    ManagedResource,
    OutputCallback,
)
from thunder_env.errors import FileOperationError, SandboxNotFoundError
from thunder_env.results import CapturedOutput, ExecResult, OutputChunk
from thunder_env.spec import SandboxSpec

DEFAULT_CAPABILITIES = frozenset({Capability.SNAPSHOTS, Capability.DISK_ACCOUNTING})
Script = Callable[[str, ExecRequest], ExecResult]


class ManualClock:
    """A monotonic clock the test moves by hand (``clock.now += 30``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def result(exit_code: int | None, stdout: bytes = b"", stderr: bytes = b"") -> ExecResult:
    def captured(data: bytes) -> CapturedOutput:
        return CapturedOutput(data, len(data), False)

    return ExecResult(exit_code, captured(stdout), captured(stderr), duration_s=0.0)


def shell_words(sandbox_id: str, request: ExecRequest) -> ExecResult:
    """``true``, ``false``, ``echo ...`` and ``hostname`` (the sandbox id); anything else is not found."""
    argv = list(request.argv)
    if argv[:2] == ["/bin/sh", "-c"] and len(argv) >= 3:
        argv = argv[2].split()
    match argv:
        case ["true"]:
            return result(0)
        case ["false"]:
            return result(1)
        case ["echo", *words]:
            return result(0, (" ".join(words) + "\n").encode())
        case ["hostname"]:
            return result(0, (sandbox_id + "\n").encode())
    return result(127, stderr=f"{argv[0] if argv else ''}: command not found\n".encode())


@dataclass
class MemorySandbox:
    spec: SandboxSpec
    labels: Mapping[str, str]
    running: bool = True
    archives: list[tuple[str, bytes]] = field(default_factory=list)  # (dest_dir, tar) as put


@dataclass
class MemoryBackend:
    """The required seam in memory, with declared ``capabilities``. Not thread-safe; one event loop."""

    capabilities: frozenset[Capability] = DEFAULT_CAPABILITIES
    script: Script = shell_words
    live: dict[str, MemorySandbox] = field(default_factory=dict)
    images: dict[str, Mapping[str, str]] = field(default_factory=dict)  # image id -> labels
    tags: dict[str, str] = field(default_factory=dict)  # repo:tag -> image id
    created: int = 0
    destroyed: list[str] = field(default_factory=list)
    execs: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    killed: list[tuple[str, str]] = field(default_factory=list)  # (sandbox id, marker)
    enforces_disk_limit: bool | None = True  # it has no disks: nothing for the manager to measure
    closed: bool = False
    orphan_dir_calls: list[str] = field(default_factory=list)  # namespaces reconcile asked about
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    # ----------------------------------------------------------------- lifecycle (required)

    async def create(self, sandbox_id: str, spec: SandboxSpec, labels: Mapping[str, str]) -> BackendSandbox:
        await asyncio.sleep(0)  # an engine call yields to the loop, like the real one
        self.live[sandbox_id] = MemorySandbox(spec, dict(labels))
        self.created += 1
        return BackendSandbox(sandbox_id, "c-" + sandbox_id, None)

    async def destroy(self, sandbox_id: str) -> None:
        if self.live.pop(sandbox_id, None) is not None:
            self.destroyed.append(sandbox_id)

    async def is_running(self, sandbox_id: str) -> bool:
        sandbox = self.live.get(sandbox_id)
        return sandbox is not None and sandbox.running

    async def list_managed(self, labels: Mapping[str, str]) -> list[ManagedResource]:
        def matches(found: Mapping[str, str]) -> bool:
            return all(found.get(k) == v for k, v in labels.items())

        resources = [
            ManagedResource("container", "c-" + sid, sb.labels, "running" if sb.running else "exited")
            for sid, sb in self.live.items()
            if matches(sb.labels)
        ]
        resources += [ManagedResource("image", iid, found) for iid, found in self.images.items() if matches(found)]
        return resources

    async def remove_managed(self, resource: ManagedResource) -> None:
        if resource.kind == "container":
            await self.destroy(resource.resource_id.removeprefix("c-"))
        elif resource.kind == "image":
            await self.remove_image(resource.resource_id)

    async def retry_removals(self) -> list[str]:
        return []

    async def close(self) -> None:
        self.closed = True

    # ---------------------------------------------------------------- operations (required)

    async def exec(
        self, sandbox_id: str, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        self._running(sandbox_id)
        self.execs.append((sandbox_id, tuple(request.argv)))
        await asyncio.sleep(0)
        answer = self.script(sandbox_id, request)
        if on_output is not None:
            for name, captured in (("stdout", answer.stdout), ("stderr", answer.stderr)):
                if captured.data:
                    on_output(OutputChunk(name, captured.data))
        return answer

    async def kill_marked(self, sandbox_id: str, marker: str, user: str = "") -> None:
        self._running(sandbox_id)
        self.killed.append((sandbox_id, marker))

    async def get_archive(self, sandbox_id: str, path: str, max_bytes: int | None = None) -> bytes:
        sandbox = self._running(sandbox_id)
        for dest_dir, data in reversed(sandbox.archives):
            if dest_dir == path:
                return data
        raise FileOperationError(path, "no such file or directory")

    async def put_archive(self, sandbox_id: str, dest_dir: str, data: bytes) -> None:
        self._running(sandbox_id).archives.append((dest_dir, data))

    # ----------------------------------------------------------- capabilities (as declared)

    async def commit(self, sandbox_id: str, snapshot_ref: str, labels: Mapping[str, str], pause: bool) -> str:
        sandbox = self._running(sandbox_id)
        image_id = f"sha256:fake{next(self._ids)}"
        self.images[image_id] = {**sandbox.labels, **labels}
        self.tags[snapshot_ref] = image_id
        return image_id

    async def remove_image(self, image_ref: str) -> bool:
        image_id = self.tags.pop(image_ref, image_ref)
        for ref in [ref for ref, iid in self.tags.items() if iid == image_id]:
            del self.tags[ref]
        return self.images.pop(image_id, None) is not None

    async def disk_usage(self) -> EngineDiskUsage:
        images = tuple(EngineImageUsage(iid, 0, 0, found) for iid, found in self.images.items())
        containers = tuple(EngineContainerUsage("c-" + sid, 0, 0, sb.labels) for sid, sb in self.live.items())
        return EngineDiskUsage(0, images, containers)

    async def storage_path(self) -> str | None:
        return None

    async def remove_orphan_dirs(self, namespace: str, live_sandbox_ids: Collection[str]) -> list[str]:
        self.orphan_dir_calls.append(namespace)
        return []

    def _running(self, sandbox_id: str) -> MemorySandbox:
        sandbox = self.live.get(sandbox_id)
        if sandbox is None:
            raise SandboxNotFoundError(sandbox_id, "its container is gone")
        return sandbox
