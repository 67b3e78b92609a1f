"""Disk accounting from the engine's own size data: unique vs shared bytes per sandbox, snapshot, program."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .backend import DiskAccounting, EngineDiskUsage
from .results import DiskReport, DiskUsage


@dataclass(frozen=True, slots=True)
class SnapshotOwnership:
    snapshot_id: str
    image_id: str
    programs: frozenset[str]  # the program that took it and those holding it


class DiskMeter:
    """Reads the engine's size data at most once per ``cache_s`` (it walks every writable layer).
    Concurrent readers share a request, unless it started before the age they accept."""

    def __init__(self, backend: DiskAccounting, cache_s: float, clock: Callable[[], float]) -> None:
        self._backend = backend
        self._cache_s = cache_s
        self._clock = clock
        self._cached: tuple[float, EngineDiskUsage] | None = None
        self._inflight: tuple[float, asyncio.Task[EngineDiskUsage]] | None = None
        self._tasks: set[asyncio.Task[EngineDiskUsage]] = set()

    async def read(self, max_age_s: float | None = None) -> EngineDiskUsage:
        max_age = self._cache_s if max_age_s is None else max_age_s
        now = self._clock()
        if self._cached is not None and now - self._cached[0] <= max_age:
            return self._cached[1]
        if self._inflight is None or self._inflight[0] < now - max_age:
            task = asyncio.create_task(self._fetch(now), name="thunder-disk-usage")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._inflight = (now, task)
        return await asyncio.shield(self._inflight[1])

    async def _fetch(self, started: float) -> EngineDiskUsage:
        try:
            usage = await self._backend.disk_usage()
            if self._cached is None or self._cached[0] <= started:
                self._cached = (started, usage)
            return usage
        finally:
            if self._inflight is not None and self._inflight[1] is asyncio.current_task():
                self._inflight = None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def account(
    usage: EngineDiskUsage,
    *,
    namespace: str,
    instance: str,
    sandbox_programs: Mapping[str, Iterable[str]],
    snapshots: Iterable[SnapshotOwnership],
    measured_at: float,
) -> DiskReport:
    """Attribute the engine's figures to this manager's sandboxes, snapshots and programs.

    A sandbox's unique bytes are its writable layer; its shared bytes are the image layers under it.
    A snapshot's unique bytes are the layers no other image uses (normally its own commit layer).
    """
    sandboxes: list[DiskUsage] = []
    programs: dict[str, int] = {}
    for container in usage.containers:
        labels = container.labels
        if labels.get("thunder.namespace") != namespace or labels.get("thunder.instance") != instance:
            continue
        sandbox_id = labels.get("thunder.sandbox", container.container_id[:12])
        unique = container.size_rw
        sandboxes.append(DiskUsage("sandbox", sandbox_id, unique, max(container.size_root_fs - unique, 0)))
        for program in set(sandbox_programs.get(sandbox_id, ())):
            programs[program] = programs.get(program, 0) + unique
    images = {image.image_id: image for image in usage.images}
    snapshot_usage: list[DiskUsage] = []
    for owned in snapshots:
        image = images.get(owned.image_id)
        if image is None:
            continue
        unique = max(image.size - image.shared_size, 0)
        snapshot_usage.append(DiskUsage("snapshot", owned.snapshot_id, unique, image.size - unique))
        for program in owned.programs:
            programs[program] = programs.get(program, 0) + unique
    managed = sum(u.unique_bytes for u in sandboxes) + sum(u.unique_bytes for u in snapshot_usage)
    return DiskReport(
        sandboxes=tuple(sorted(sandboxes, key=lambda u: u.resource_id)),
        snapshots=tuple(sorted(snapshot_usage, key=lambda u: u.resource_id)),
        programs=dict(sorted(programs.items())),
        managed_bytes=managed,
        engine_bytes=usage.total_bytes,
        measured_at=measured_at,
    )
