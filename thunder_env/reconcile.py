"""Crash recovery: find what dead managers of a namespace left behind, and remove it.

Every resource carries the identity of the process that made it (host, boot, pid namespace, pid,
process start in clock ticks).
A resource whose owner no longer runs is an orphan; one whose owner still runs is left alone, so
two live managers sharing a namespace never reclaim each other's sandboxes.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from thunder_common.procfs import stat_fields

from .backend import HostLocalAgent, ManagedResource, SandboxLifecycle

log = logging.getLogger(__name__)


# Why boot id + start ticks (and not a lock file held with flock): the identity needs nothing shared
# between managers (a lock file needs one directory every manager, in any container, sees), and the
# start time in clock ticks since boot is what the kernel keeps per process: a wall-clock step does
# not change it, unlike psutil's create_time (boot time + ticks, recomputed from the wall clock).
# The pid namespace guards the other failure: a manager in a container (host network: same hostname)
# has pids that mean nothing here, so its resources are never judged from this side.


@dataclass(frozen=True, slots=True)
class OwnerIdentity:
    host: str
    pid: int
    started: int  # start time of the process in clock ticks since boot: guards against pid reuse
    boot_id: str = ""  # the kernel's boot id; "" for a label written by an older version
    pid_ns: str = ""  # the pid namespace the pid belongs to
    legacy_started: float | None = None  # wall-clock start of an older label (host/pid/started)

    @classmethod
    def current(cls) -> OwnerIdentity:
        pid = os.getpid()
        started = _start_ticks(pid)
        assert started is not None, "/proc/self/stat is unreadable"
        return cls(socket.gethostname(), pid, started, _boot_id(), _pid_namespace())

    def encode(self) -> str:
        return f"{self.host}/{self.boot_id}/{self.pid_ns}/{self.pid}/{self.started}"

    @classmethod
    def decode(cls, text: str) -> OwnerIdentity | None:
        try:
            parts = text.rsplit("/", 4)
            if len(parts) == 5:
                host, boot_id, pid_ns, pid, started = parts
                return cls(host, int(pid), int(started), boot_id, pid_ns)
            host, pid, wall = text.rsplit("/", 2)
            return cls(host, int(pid), 0, legacy_started=float(wall))
        except ValueError:
            return None

    def is_alive(self) -> bool:
        """False only when this host can tell the owner is gone; anything it cannot judge is alive."""
        if self.host != socket.gethostname():
            return True  # cannot tell for another host: never reclaim what may be in use
        if self.legacy_started is not None:
            return _legacy_alive(self.pid, self.legacy_started)
        if self.boot_id != _boot_id():
            return False  # made before the last reboot: every process of that boot is gone
        if self.pid_ns != _pid_namespace():
            return True  # another pid namespace (a manager in a container): its pids are not ours
        return _start_ticks(self.pid) == self.started


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return "unknown-ns"


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot (None: no such process)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


def _legacy_alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass(slots=True)
class ReconcileReport:
    removed: list[ManagedResource] = field(default_factory=list)
    kept_live_owner: int = 0
    removed_dirs: list[str] = field(default_factory=list)  # sandbox ids whose host directories went
    # What could not be removed, with the reason: logged, left for the next reconcile.
    failed: list[tuple[ManagedResource | None, str]] = field(default_factory=list)

    @property
    def removed_containers(self) -> int:
        return sum(1 for r in self.removed if r.kind == "container")

    @property
    def removed_images(self) -> int:
        return sum(1 for r in self.removed if r.kind == "image")


async def reconcile_namespace(
    backend: SandboxLifecycle, namespace: str, own_instance: str, host_agent: HostLocalAgent | None = None
) -> ReconcileReport:
    """Remove what dead managers of ``namespace`` left: labelled resources, and with ``host_agent`` (a
    backend keeping per-sandbox state on this host) the host directories of sandboxes that are gone."""
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
        try:
            await backend.remove_managed(resource)
        except Exception as exc:  # one stuck resource must not keep the manager from starting
            log.warning("reconcile: could not remove %s %s: %s", resource.kind, resource.resource_id[:12], exc)
            report.failed.append((resource, str(exc)))
            continue
        report.removed.append(resource)
    if host_agent is None:
        return report
    gone = {r.resource_id for r in report.removed}
    live = {r.labels.get("thunder.sandbox", "") for r in found if r.kind == "container" and r.resource_id not in gone}
    try:
        report.removed_dirs = await host_agent.remove_orphan_dirs(namespace, live)
    except Exception as exc:
        log.warning("reconcile: could not remove orphaned host directories: %s", exc)
        report.failed.append((None, f"host directories: {exc}"))
    return report
