"""The pure scheduling policy (ThunderAgent sections 4.3.1-4.3.2), no I/O and no asyncio.

Input: a snapshot of programs and backends. Output: which programs to pause and where to restore which.
The scheduler applies the decisions; this module only decides.

Per healthy backend, the thrashing check (eq. 7) weighs reasoning programs by their context c and acting
programs by c * exp(-t / tau) (t: time since the acting phase began) against lambda_max * capacity. When
over, it pauses acting programs first, shortest first (score 1/c + [acting]); decay thus lets long-idle
caches be evicted by the engine instead of pausing anyone. When the memory actually held (eq. 6, plain c)
is below lambda_min * capacity, it restores from
one global queue across backends, reasoning-ready first, shortest first (score 1/c + [reasoning]), where a
program that has waited w seconds counts as (1 + aging_rate * w) times shorter, and a program waiting past
max_wait_s is served before all others with capacity reserved (and, if need be, freed) for it, so no
program waits without bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from thunder_sched.config import PolicyConfig


class Phase(StrEnum):
    REASONING = "reasoning"  # a request is in flight or waiting to be admitted
    ACTING = "acting"  # between requests: the agent runs a tool


class Status(StrEnum):
    ACTIVE = "active"  # placed on a backend; its requests go straight through
    PAUSED = "paused"  # in the global waiting queue; its requests are held
    TERMINATED = "terminated"


class PauseReason(StrEnum):
    THRASHING = "thrashing"
    BACKEND_DOWN = "backend_down"
    STARVATION = "starvation"  # preempted to make room for a program waiting past max_wait_s


@dataclass(frozen=True, slots=True)
class ProgramView:
    """What the policy knows of one live program."""

    program_id: str
    tokens: int
    phase: Phase
    status: Status
    # ACTIVE: its placement. PAUSED: the backend still running its in-flight request (draining), else None.
    backend: str | None = None
    ready: bool = False  # PAUSED with a request held in the proxy
    acting_s: float = 0.0  # elapsed time of the current acting phase
    waiting_s: float = 0.0  # how long its held request has waited
    previous_backend: str | None = None
    paused_s: float = math.inf  # time since it was paused
    active_s: float = math.inf  # time since it was (re)activated


@dataclass(frozen=True, slots=True)
class BackendView:
    url: str
    capacity: int  # KV pool size in tokens; 0 when unknown
    healthy: bool

    @property
    def usable(self) -> bool:
        return self.healthy and self.capacity > 0


@dataclass(frozen=True, slots=True)
class Pause:
    program_id: str
    backend: str | None
    reason: PauseReason


@dataclass(frozen=True, slots=True)
class Restore:
    program_id: str
    backend: str
    affinity: bool  # placed on its previous backend for its cached prefix


@dataclass(frozen=True, slots=True)
class Decisions:
    pauses: tuple[Pause, ...] = ()
    restores: tuple[Restore, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pauses or self.restores)


_PauseFn = Callable[[ProgramView, PauseReason], None]


def decay(acting_s: float, config: PolicyConfig) -> float:
    """f(t) of equation 7: exp(-t / tau), or 1 when time decay is off."""
    if not config.time_decay:
        return 1.0
    return math.exp(-max(acting_s, 0.0) / config.tau_s)


def weight(program: ProgramView, config: PolicyConfig) -> float:
    """The program's share of the thrashing check."""
    if program.phase is Phase.ACTING:
        return program.tokens * decay(program.acting_s, config)
    return float(program.tokens)


def pause_score(program: ProgramView) -> float:
    """Equation 11: higher is paused first (acting first, then shortest)."""
    return 1.0 / max(program.tokens, 1) + (1.0 if program.phase is Phase.ACTING else 0.0)


def restore_score(program: ProgramView, config: PolicyConfig) -> float:
    """Equation 10 with aging: higher is restored first (reasoning-ready first, then shortest, then oldest)."""
    aging = 1.0 + config.aging_rate * max(program.waiting_s, 0.0)
    ready = 1.0 if (program.ready or program.phase is Phase.REASONING) else 0.0
    return aging / max(program.tokens, 1) + ready


def backend_loads(programs: Iterable[ProgramView], config: PolicyConfig) -> dict[str, float]:
    """Weighted load of ACTIVE programs per backend (the left side of the thrashing check)."""
    loads: dict[str, float] = {}
    for p in programs:
        if p.status is Status.ACTIVE and p.backend is not None:
            loads[p.backend] = loads.get(p.backend, 0.0) + weight(p, config)
    return loads


def decide(programs: Sequence[ProgramView], backends: Sequence[BackendView], config: PolicyConfig) -> Decisions:
    """One round of the policy: evacuate down backends, relieve thrashing, then restore from the queue."""
    by_url = {b.url: b for b in backends}
    pauses: list[Pause] = []
    paused_now: set[str] = set()

    def pause(p: ProgramView, reason: PauseReason) -> None:
        pauses.append(Pause(p.program_id, p.backend, reason))
        paused_now.add(p.program_id)

    active = [p for p in programs if p.status is Status.ACTIVE]
    # 1. A program never stays on a backend that is down or has no known capacity.
    for p in active:
        b = by_url.get(p.backend) if p.backend is not None else None
        if b is None or not b.usable:
            pause(p, PauseReason.BACKEND_DOWN)

    # 2. Thrashing check per backend.
    loads: dict[str, float] = {b.url: 0.0 for b in backends if b.usable}
    members: dict[str, list[ProgramView]] = {url: [] for url in loads}
    for p in active:
        if p.program_id in paused_now:
            continue
        assert p.backend is not None
        loads[p.backend] += weight(p, config)
        members[p.backend].append(p)
    for url, group in members.items():
        limit = config.lambda_max * by_url[url].capacity
        remaining = len(group)
        for p in sorted(group, key=lambda q: (-pause_score(q), q.program_id)):
            if loads[url] <= limit:
                break
            if remaining == 1:  # pausing the only program cannot help: it would come straight back
                break
            pause(p, PauseReason.THRASHING)
            loads[url] -= weight(p, config)
            remaining -= 1

    # Restores are judged on the memory actually held (eq. 6: plain c, no decay): decay only decides
    # when the thrashing check pauses, otherwise room "freed" by an idle program's decay would be handed
    # to another program and taken back when the idle one returns (pause/restore churn, recomputation).
    # A request already running keeps its KV until it ends, whether its program is paused or not.
    loads = {url: 0.0 for url in loads}
    for p in programs:
        if p.backend not in loads:
            continue
        kept_active = p.status is Status.ACTIVE and p.program_id not in paused_now
        draining = p.phase is Phase.REASONING and not kept_active
        if kept_active or draining:
            loads[p.backend] += p.tokens

    # 3. Restore from the global waiting queue.
    restores = _restore(programs, by_url, loads, members, paused_now, config, pause)
    return Decisions(tuple(pauses), tuple(restores))


def _restore(
    programs: Sequence[ProgramView],
    by_url: dict[str, BackendView],
    loads: dict[str, float],
    members: dict[str, list[ProgramView]],
    paused_now: set[str],
    config: PolicyConfig,
    pause: _PauseFn,
) -> list[Restore]:
    # Only a program with a held request is restored: a paused acting program has nothing to run, and
    # reserving room for it would only hold back ready ones. It becomes ready when its next request arrives.
    queue = [p for p in programs if p.status is Status.PAUSED and p.ready]
    starving = sorted(
        (p for p in queue if p.waiting_s >= config.max_wait_s), key=lambda p: (-p.waiting_s, p.program_id)
    )
    starving_ids = {p.program_id for p in starving}
    rest = sorted(
        (p for p in queue if p.program_id not in starving_ids),
        key=lambda p: (-restore_score(p, config), -p.waiting_s, p.program_id),
    )
    restores: list[Restore] = []
    for p in [*starving, *rest]:
        placed = _place(p, by_url, loads, config, starving=p.program_id in starving_ids)
        if placed is not None:
            url, affinity = placed
            loads[url] += _need(p, by_url[url], config)
            restores.append(Restore(p.program_id, url, affinity))
            continue
        if p.program_id in starving_ids:
            url = _make_room(p, by_url, loads, members, paused_now, config, pause)
            if url is not None:
                loads[url] += _need(p, by_url[url], config)
                restores.append(Restore(p.program_id, url, False))
            # Reservation: nobody overtakes a starving program, so the room it needs can only grow.
            break
    return restores


def _need(p: ProgramView, backend: BackendView, config: PolicyConfig) -> float:
    # A program larger than the whole limit still gets a backend, alone.
    return float(min(max(p.tokens, 0), config.lambda_max * backend.capacity))


def _fits(p: ProgramView, b: BackendView, loads: dict[str, float], config: PolicyConfig, starving: bool) -> bool:
    if not b.usable:
        return False
    load = loads.get(b.url, 0.0)
    if not starving and load >= config.low_watermark * b.capacity and load > 0:
        return False  # hysteresis: restore only below the low watermark
    return load + _need(p, b, config) <= config.lambda_max * b.capacity + 1e-9


def _place(
    p: ProgramView, by_url: dict[str, BackendView], loads: dict[str, float], config: PolicyConfig, starving: bool
) -> tuple[str, bool] | None:
    """Previous backend while its prefix is likely cached, else the one with most free room."""
    prev = by_url.get(p.previous_backend) if p.previous_backend is not None else None
    if prev is not None and p.paused_s < config.cache_affinity_s and _fits(p, prev, loads, config, starving):
        return prev.url, True
    fitting = [b for b in by_url.values() if _fits(p, b, loads, config, starving)]
    if not fitting:
        return None
    best = max(fitting, key=lambda b: (config.lambda_max * b.capacity - loads.get(b.url, 0.0), b.url))
    return best.url, False


def _make_room(
    p: ProgramView,
    by_url: dict[str, BackendView],
    loads: dict[str, float],
    members: dict[str, list[ProgramView]],
    paused_now: set[str],
    config: PolicyConfig,
    pause: _PauseFn,
) -> str | None:
    """Preempt residents of one backend so a starving program fits; None if no backend can be freed."""
    best: tuple[float, str, list[ProgramView]] | None = None
    for url, group in members.items():
        b = by_url[url]
        if not b.usable:
            continue
        # Only acting residents free memory at once; a running request keeps its KV until it ends.
        victims = sorted(
            (
                q
                for q in group
                if q.program_id not in paused_now and q.phase is Phase.ACTING and q.active_s >= config.min_residency_s
            ),
            key=lambda q: (-pause_score(q), q.program_id),
        )
        freeable = float(sum(q.tokens for q in victims))
        room = config.lambda_max * b.capacity - loads.get(url, 0.0) + freeable
        if room + 1e-9 >= _need(p, b, config) and (best is None or room > best[0]):
            best = (room, url, victims)
    if best is None:
        return None
    _, url, victims = best
    limit = config.lambda_max * by_url[url].capacity
    for q in victims:
        if loads[url] + _need(p, by_url[url], config) <= limit + 1e-9:
            break
        pause(q, PauseReason.STARVATION)
        loads[url] -= q.tokens
    return url
