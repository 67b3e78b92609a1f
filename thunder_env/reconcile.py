"""Crash recovery: find what dead managers of a namespace left behind, and remove it.

Every resource carries the identity of the process that made it (host, pid, process start time).
A resource whose owner no longer runs is an orphan; one whose owner still runs is left alone, so
two live managers sharing a namespace never reclaim each other's sandboxes.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

import psutil

from .backend import ManagedResource, SandboxLifecycle

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OwnerIdentity:
    host: str
    pid: int
    started: float  # the process's start time: guards against pid reuse

    @classmethod
    def current(cls) -> OwnerIdentity:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def encode(self) -> str:
        return f"{self.host}/{self.pid}/{self.started:.2f}"

    @classmethod
    def decode(cls, text: str) -> OwnerIdentity | None:
        try:
            host, pid, started = text.rsplit("/", 2)
            return cls(host, int(pid), float(started))
        except ValueError:
            return None

    def is_alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # cannot tell for another host: never reclaim what may be in use
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.05
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


@dataclass(slots=True)
class ReconcileReport:
    removed: list[ManagedResource] = field(default_factory=list)
    kept_live_owner: int = 0
    removed_dirs: list[str] = field(default_factory=list)  # sandbox ids whose host directories went

    @property
    def removed_containers(self) -> int:
        return sum(1 for r in self.removed if r.kind == "container")

    @property
    def removed_images(self) -> int:
        return sum(1 for r in self.removed if r.kind == "image")


async def reconcile_namespace(backend: SandboxLifecycle, namespace: str, own_instance: str) -> ReconcileReport:
    report = ReconcileReport()
    found = await backend.list_managed({"thunder.managed": "1", "thunder.namespace": namespace})
    # Containers before images: an image cannot go while a container still uses it.
    for resource in sorted(found, key=lambda r: r.kind != "container"):
        if resource.labels.get("thunder.instance") == own_instance:
            continue
        owner = OwnerIdentity.decode(resource.labels.get("thunder.owner", ""))
        if owner is not None and owner.is_alive():
            report.kept_live_owner += 1
            continue
        log.info("reconcile: removing orphaned %s %s", resource.kind, resource.resource_id[:12])
        await backend.remove_managed(resource)
        report.removed.append(resource)
    gone = {r.resource_id for r in report.removed}
    live = {r.labels.get("thunder.sandbox", "") for r in found if r.kind == "container" and r.resource_id not in gone}
    report.removed_dirs = await backend.remove_orphan_dirs(namespace, live)
    return report
