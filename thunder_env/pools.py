"""Warm pools: sandboxes started ahead of demand, per spec, handed out exactly once.

``take`` pops a warm sandbox synchronously (so two acquires can never get the same one), checks it is
still running (a dead one is thrown away, never handed out) and returns None when the pool is empty:
the caller then starts one cold, so an empty pool never fails a request. Refills run in the background,
at most ``refill_concurrency`` at a time across all pools. A pool's target size follows demand: the
recent acquire rate times the time one refill takes (Little's law: the sandboxes consumed while one
refill is under way), kept within the pool's min/max.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .backend import BackendSandbox, SandboxLifecycle
from .errors import EnvError
from .results import PoolInfo
from .spec import SandboxSpec

log = logging.getLogger(__name__)

# How often a pool re-reads its demand (the target shrinks as acquires stop).
TICK_S = 2.0
MAX_BACKOFF_S = 30.0
SandboxStarter = Callable[[SandboxSpec], Awaitable[BackendSandbox]]
SandboxDiscarder = Callable[[str], Awaitable[None]]


def target_size(rate_per_s: float, refill_s: float | None, min_size: int, max_size: int) -> int:
    """Warm sandboxes to keep: the acquires expected while one refill runs, within [min, max]."""
    if rate_per_s <= 0:
        wanted = 0
    elif refill_s is None:
        wanted = 1  # no refill measured yet: one, to learn how long a refill takes
    else:
        wanted = math.ceil(rate_per_s * refill_s)
    return max(min(min_size, max_size), min(max_size, wanted))


class DemandTracker:
    """Acquire rate over a sliding window."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()

    def record(self) -> None:
        self._times.append(self._clock())

    def rate(self) -> float:
        horizon = self._clock() - self.window_s
        while self._times and self._times[0] < horizon:
            self._times.popleft()
        return len(self._times) / self.window_s


@dataclass(eq=False)
class WarmPool:
    key: str
    spec: SandboxSpec
    min_size: int
    max_size: int
    demand: DemandTracker
    warm: collections.deque[BackendSandbox] = field(default_factory=collections.deque)
    starting: int = 0
    hits: int = 0
    misses: int = 0
    discarded_dead: int = 0
    refill_s: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    def target(self) -> int:
        return target_size(self.demand.rate(), self.refill_s, self.min_size, self.max_size)

    def info(self) -> PoolInfo:
        return PoolInfo(
            key=self.key,
            image=self.spec.image,
            warm=len(self.warm),
            starting=self.starting,
            target=self.target(),
            min_size=self.min_size,
            max_size=self.max_size,
            hits=self.hits,
            misses=self.misses,
            discarded_dead=self.discarded_dead,
            refill_s=self.refill_s,
        )


class PoolSet:
    """Every warm pool of one manager."""

    def __init__(
        self,
        lifecycle: SandboxLifecycle,
        start: SandboxStarter,
        discard: SandboxDiscarder,
        *,
        refill_concurrency: int,
        demand_window_s: float,
        default_min: int,
        default_max: int,
        clock: Callable[[], float],
    ) -> None:
        self._lifecycle = lifecycle
        self._start = start
        self._discard = discard
        self._refills = asyncio.Semaphore(refill_concurrency)
        self._window_s = demand_window_s
        self._default = (default_min, default_max)
        self._clock = clock
        self._pools: dict[str, WarmPool] = {}
        self._refilling: set[asyncio.Task[None]] = set()
        self._discarding: set[asyncio.Task[None]] = set()
        self._closed = False

    def configure(self, spec: SandboxSpec, min_size: int, max_size: int) -> PoolInfo:
        """Create or resize the pool of ``spec``; max_size 0 removes it (its warm sandboxes go)."""
        if min_size < 0 or max_size < min_size:
            raise ValueError(f"pool sizes need 0 <= min_size <= max_size, got {min_size}, {max_size}")
        key = spec.key()
        pool = self._pools.get(key)
        if max_size == 0:
            if pool is not None:
                self._remove(pool)
            return PoolInfo(key, spec.image, 0, 0, 0, 0, 0, 0, 0, 0, None)
        if pool is None:
            pool = self._add(spec)
        pool.min_size, pool.max_size = min_size, max_size
        pool.wake.set()
        return pool.info()

    async def take(self, spec: SandboxSpec) -> BackendSandbox | None:
        """A running warm sandbox of ``spec``, or None (start one cold)."""
        pool = self._pools.get(spec.key())
        if pool is None:
            if self._default[1] == 0 or self._closed:
                return None
            pool = self._add(spec)
        pool.demand.record()
        pool.wake.set()
        while pool.warm:
            handle = pool.warm.popleft()  # synchronous: handed to exactly one caller
            try:
                alive = await self._lifecycle.is_running(handle.sandbox_id)
            except BaseException:
                await asyncio.shield(self._discard(handle.sandbox_id))
                raise
            if alive:
                pool.hits += 1
                return handle
            pool.discarded_dead += 1
            log.warning("warm sandbox %s of pool %s died; discarding it", handle.sandbox_id, pool.key)
            self._spawn(self._discard(handle.sandbox_id))
        pool.misses += 1
        return None

    def infos(self) -> list[PoolInfo]:
        return [pool.info() for pool in self._pools.values()]

    async def wait(self, spec: SandboxSpec, at_least: int | None, timeout_s: float) -> PoolInfo:
        pool = self._pools.get(spec.key())
        if pool is None:
            raise EnvError("no pool for this spec: configure_pool() it first")
        async with asyncio.timeout(timeout_s), pool.changed:
            await pool.changed.wait_for(lambda: len(pool.warm) >= (pool.target() if at_least is None else at_least))
        return pool.info()

    async def close(self) -> None:
        self._closed = True
        for pool in list(self._pools.values()):
            self._remove(pool)
        # Refills are cancelled (the starter removes a half-started sandbox); discards run to the end.
        for task in self._refilling:
            task.cancel()
        while self._refilling or self._discarding:
            await asyncio.gather(*self._refilling, *self._discarding, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _add(self, spec: SandboxSpec) -> WarmPool:
        pool = WarmPool(spec.key(), spec, *self._default, demand=DemandTracker(self._window_s, self._clock))
        pool.min_size = min(pool.min_size, pool.max_size)
        self._pools[pool.key] = pool
        pool.task = asyncio.create_task(self._maintain(pool), name=f"thunder-pool-{pool.key}")
        return pool

    def _remove(self, pool: WarmPool) -> None:
        self._pools.pop(pool.key, None)
        if pool.task is not None:
            pool.task.cancel()
        while pool.warm:
            self._spawn(self._discard(pool.warm.popleft().sandbox_id))

    async def _maintain(self, pool: WarmPool) -> None:
        while self._pools.get(pool.key) is pool:
            target = pool.target()
            if self._clock() >= pool.retry_at:
                for _ in range(target - len(pool.warm) - pool.starting):
                    pool.starting += 1
                    self._track(self._refilling, self._refill(pool))
            while len(pool.warm) > target:
                # Demand fell: the oldest warm sandboxes go first.
                self._spawn(self._discard(pool.warm.popleft().sandbox_id))
            pool.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await pool.wake.wait()

    async def _refill(self, pool: WarmPool) -> None:
        try:
            async with self._refills:
                if self._pools.get(pool.key) is not pool or len(pool.warm) + pool.starting > pool.target():
                    return  # demand fell while this refill waited for its turn
                started = self._clock()
                handle = await self._start(pool.spec)
                elapsed = self._clock() - started
                pool.refill_s = elapsed if pool.refill_s is None else 0.7 * pool.refill_s + 0.3 * elapsed
                pool.failures = 0
            if self._pools.get(pool.key) is not pool:
                await self._discard(handle.sandbox_id)
                return
            pool.warm.append(handle)
            async with pool.changed:
                pool.changed.notify_all()
        except Exception as exc:
            pool.failures += 1
            backoff = min(MAX_BACKOFF_S, 2.0**pool.failures)
            pool.retry_at = self._clock() + backoff
            log.warning("refill of pool %s failed (%s); next try in %.0f s", pool.key, exc, backoff)
        finally:
            pool.starting -= 1

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._track(self._discarding, coro)

    @staticmethod
    def _track(tasks: set[asyncio.Task[None]], coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
