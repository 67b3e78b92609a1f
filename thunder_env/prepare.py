"""Preparation ahead of use: an environment started for a program before the program asks for it.

``prepare`` returns at once and starts (or takes from a pool) a sandbox reserved for the program;
the program's later ``acquire`` of the same spec claims it, ready or still starting. What nobody
claims within the TTL, or what belongs to a program that ends, is destroyed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from .backend import BackendSandbox
from .results import PrepareStats
from .spec import SandboxSpec

log = logging.getLogger(__name__)

Obtainer = Callable[[str, SandboxSpec], Awaitable[BackendSandbox]]
Discarder = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class _Prepared:
    program_id: str
    task: asyncio.Task[BackendSandbox]
    timer: asyncio.TimerHandle | None = None


class Preparations:
    def __init__(self, obtain: Obtainer, discard: Discarder, ttl_s: float) -> None:
        self._obtain = obtain
        self._discard = discard
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], _Prepared] = {}
        self._cleanup: set[asyncio.Future[object]] = set()
        self.stats = PrepareStats()

    def prepare(self, program_id: str, spec: SandboxSpec) -> bool:
        """Start preparing; False if one is already prepared or under way for this program and spec."""
        key = (program_id, spec.key())
        existing = self._entries.get(key)
        if existing is not None and not _failed(existing.task):
            return False
        if existing is not None:
            self._forget(key, existing)
        task = asyncio.create_task(self._obtain(program_id, spec), name=f"thunder-prepare-{program_id}")
        task.add_done_callback(self._log_failure)
        entry = _Prepared(program_id, task)
        entry.timer = asyncio.get_running_loop().call_later(self._ttl_s, self._expire, key, entry)
        self._entries[key] = entry
        self._count(requested=1)
        return True

    def is_ready(self, program_id: str, spec: SandboxSpec) -> bool:
        entry = self._entries.get((program_id, spec.key()))
        return entry is not None and entry.task.done() and not _failed(entry.task)

    async def claim(self, program_id: str, spec: SandboxSpec) -> BackendSandbox | None:
        """The prepared sandbox (waiting for it if it is still starting), or None to start one now."""
        entry = self._entries.pop((program_id, spec.key()), None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.task.done():
            if _failed(entry.task):
                self._count(failed=1)
                return None
            self._count(ready_at_acquire=1)
            return entry.task.result()
        try:
            handle = await asyncio.shield(entry.task)
        except asyncio.CancelledError:
            if not entry.task.cancelled():
                # Our caller gave up, not the preparation: its sandbox must not be orphaned.
                self._drop(entry)
            raise
        except Exception:
            self._count(failed=1)
            return None
        self._count(waited_at_acquire=1)
        return handle

    async def end_program(self, program_id: str) -> None:
        for key, entry in list(self._entries.items()):
            if entry.program_id == program_id:
                self._forget(key, entry)
        await self._drain()

    async def close(self) -> None:
        for key, entry in list(self._entries.items()):
            self._forget(key, entry)
        await self._drain()

    # ------------------------------------------------------------------ internals

    def _expire(self, key: tuple[str, str], entry: _Prepared) -> None:
        if self._entries.get(key) is entry:
            log.info("prepared environment of program %s expired unclaimed", entry.program_id)
            self._count(expired=1)
            self._forget(key, entry)

    def _forget(self, key: tuple[str, str], entry: _Prepared) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
        if entry.timer is not None:
            entry.timer.cancel()
        self._drop(entry)

    def _drop(self, entry: _Prepared) -> None:
        """Destroy what the preparation made or is making (the obtainer cleans up when cancelled)."""
        cleanup: asyncio.Future[object]
        if not entry.task.done():
            entry.task.cancel()
            cleanup = entry.task  # awaited by close(): the obtainer's own cleanup must finish
        elif not _failed(entry.task):
            cleanup = asyncio.ensure_future(self._discard(entry.task.result().sandbox_id))
        else:
            return
        self._cleanup.add(cleanup)
        cleanup.add_done_callback(self._cleanup.discard)

    async def _drain(self) -> None:
        while self._cleanup:
            await asyncio.gather(*self._cleanup, return_exceptions=True)

    def _count(self, **increments: int) -> None:
        self.stats = replace(self.stats, **{name: getattr(self.stats, name) + n for name, n in increments.items()})

    @staticmethod
    def _log_failure(task: asyncio.Task[BackendSandbox]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("preparing an environment failed: %s", task.exception())


def _failed(task: asyncio.Task[BackendSandbox]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
