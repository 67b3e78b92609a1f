"""Per-sandbox disk limits where the storage driver cannot enforce them: measure, and stop the offender.

The engine's size data (``DiskReport``) gives each sandbox's writable layer. A sandbox past its limit is
stopped by the manager's callback with a reason its program sees (the lease's release reason). The check
runs every ``interval_s`` while the manager has sandboxes; its cost is one engine size walk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .periodic import Periodic
from .results import DiskReport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DiskOverrun:
    sandbox_id: str
    used_bytes: int
    limit_bytes: int

    @property
    def reason(self) -> str:
        return (
            f"stopped: its writable layer reached {self.used_bytes >> 20} MiB, over its disk limit of "
            f"{self.limit_bytes >> 20} MiB; keep large files out of the sandbox or ask for a larger disk_bytes"
        )


def find_overruns(report: DiskReport, limits: Mapping[str, int]) -> list[DiskOverrun]:
    """The sandboxes of ``limits`` (sandbox id -> limit in bytes) whose writable layer is past the limit."""
    return [
        DiskOverrun(usage.resource_id, usage.unique_bytes, limits[usage.resource_id])
        for usage in report.sandboxes
        if usage.resource_id in limits and usage.unique_bytes > limits[usage.resource_id]
    ]


class DiskLimitWatch:
    """Runs ``check`` every ``interval_s`` once started; a failed check is logged and retried next time."""

    def __init__(
        self,
        measure: Callable[[], Awaitable[DiskReport]],
        limits: Callable[[], Mapping[str, int]],
        stop: Callable[[DiskOverrun], Awaitable[None]],
        interval_s: float,
    ) -> None:
        self._measure = measure
        self._limits = limits
        self._stop = stop
        self._periodic = Periodic(self.check, interval_s, "disk limit check")

    def start(self) -> None:
        self._periodic.start()

    async def check(self) -> list[DiskOverrun]:
        """Stop every sandbox past its limit now; returns what was found."""
        if not self._limits():
            return []
        report = await self._measure()
        overruns = find_overruns(report, self._limits())  # re-read: sandboxes may have gone meanwhile
        for overrun in overruns:
            log.warning("sandbox %s %s", overrun.sandbox_id, overrun.reason)
        results = await asyncio.gather(*(self._stop(overrun) for overrun in overruns), return_exceptions=True)
        for overrun, result in zip(overruns, results, strict=True):
            if isinstance(result, Exception):
                log.warning("cannot stop sandbox %s past its disk limit yet: %s", overrun.sandbox_id, result)
        return overruns

    async def close(self) -> None:
        await self._periodic.stop()
