"""Background work run every N seconds (the manager's idle reaper and health check, the disk-limit watch,
the MCP registry's idle reaper): a failed run is logged and retried next interval, and stopping lets a run
in progress finish (it may be removing containers: cut off, it would leak them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, work: Callable[[], Awaitable[object]], interval_s: float, what: str) -> None:
        self._work = work
        self._interval_s = interval_s
        self._what = what  # for the task's name and the log: "idle reaper", "health check"...
        self._loop: asyncio.Task[None] | None = None
        self._run: asyncio.Future[object] | None = None

    @property
    def started(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Start the loop (idempotent); the first run comes one interval from now."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._forever(), name=f"thunder-{self._what.replace(' ', '-')}")

    async def stop(self) -> None:
        """Stop the loop and wait for a run in progress to finish (idempotent)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._run = asyncio.ensure_future(self._work())
            try:
                await asyncio.shield(self._run)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; retrying next interval", self._what)
