"""The pure scheduling policy (ThunderAgent sections 4.3.1-4.3.2, extended), no I/O and no asyncio.

Input: a snapshot of programs and backends. Output: which programs to pause and where to restore which.
The scheduler applies the decisions; this module only decides.

Two loads per backend:
- the *weighted* load (eq. 7): a reasoning program counts its context c plus the room its decode still
  needs; an acting program counts c * f(t), f(t) = exp(-t / tau), or, when the scheduler knows its tool
  (tool events), c while the tool is expected to end soon and 0 once it is expected to outlast the value
  of its cache;
- the *held* load: every active program at its full c (plus decode room while reasoning). It is what the
  pool must hold when all of them reason at once, so it never exceeds lambda_max * capacity after a round.

Per round: programs on a down backend are paused; a backend whose weighted load is over the limit pauses
acting programs first, shortest first (eq. 11); then ready programs are restored from one queue (eq. 10 with
aging): starving ones (waited past max_wait_s) first, then programs already in progress, then newcomers,
KV still in a host tier before KV that must be recomputed. A program fits a backend when its weighted load
leaves room; the room that decayed acting programs still hold is then freed by pausing them at once
(reason `decay` or `tool`), so decay frees room without over-committing the pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from thunder_sched.config import PolicyConfig

_EPS = 1e-9


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
    DECAY = "decay"  # its decayed room was given to a ready program
    TOOL = "tool"  # its tool is expected to outlast its cache's value; its room was given to a ready program


@dataclass(slots=True)
class ProgramView:
    """What the policy knows of one live program. A snapshot: never changed after it is made (not frozen
    only because a frozen dataclass costs twice as much to build, and rounds build many)."""

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
    reserve: int = 0  # decode room still needed while reasoning (tokens)
    in_progress: bool = False  # has run before: restored ahead of newcomers
    # Its running tool, as the scheduler judges it from learned durations: None (no tool events: time decay
    # applies), False (expected to end soon: keeps its room), True (expected to outlast its cache's value).
    tool_marked: bool | None = None
    in_host_tier: bool = False  # paused, and its KV is still in its previous backend's host tier
    # A prompt prefix shared with other programs (the same system prompt, model and cache salt): the engine
    # holds it once per backend however many programs use it, so it is counted once per backend.
    prefix_key: str | None = None
    prefix_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BackendView:
    url: str
    capacity: int  # KV pool size in tokens (summed over the engines behind the URL); 0 when unknown
    healthy: bool
    host_tier_tokens: int = 0  # host (CPU) KV tier size in tokens; 0 when the backend has none
    engine_running_tokens: float | None = None  # KV the engine reports held by running requests, if known
    block_size: int = 1  # the engine allocates KV in blocks of this many tokens

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
    floor: bool = False  # placed past the memory limit by work conservation (too few requests running)


@dataclass(frozen=True, slots=True)
class Decisions:
    pauses: tuple[Pause, ...] = ()
    restores: tuple[Restore, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pauses or self.restores)


def decay(acting_s: float, config: PolicyConfig) -> float:
    """f(t) of equation 7: exp(-t / tau), or 1 when time decay is off."""
    if not config.time_decay:
        return 1.0
    return math.exp(-max(acting_s, 0.0) / config.tau_s)


def weight(program: ProgramView, config: PolicyConfig, block: int = 1) -> float:
    """The program's share of the weighted load (the thrashing check and restore room), its shared prefix
    aside (a backend counts each shared prefix once, in full)."""
    own = held(program, block)
    if program.phase is Phase.REASONING:
        return own
    if config.tool_aware and program.tool_marked is not None:
        return 0.0 if program.tool_marked else own
    return own * decay(program.acting_s, config)


def is_idle(program: ProgramView, config: PolicyConfig) -> bool:
    """An acting program whose weight may fall below its memory: it decays, or its tool was judged long."""
    if program.phase is not Phase.ACTING:
        return False
    if config.tool_aware and program.tool_marked is not None:
        return program.tool_marked
    return config.time_decay


def shared_held(program: ProgramView, block: int = 1) -> int:
    """The part of its shared prefix the engine can share: whole blocks only."""
    return program.prefix_tokens // block * block


def held(program: ProgramView, block: int = 1) -> float:
    """Memory the program may claim at any moment beyond its shared prefix: its context (plus decode room
    while reasoning), in whole blocks of the engine."""
    reserve = program.reserve if program.phase is Phase.REASONING else 0
    own = max(program.tokens - shared_held(program, block), 0) + reserve
    return float(-(-own // block) * block)


def size(program: ProgramView, block: int = 1) -> float:
    """Its whole memory, shared prefix included: what it needs alone on a backend."""
    return held(program, block) + shared_held(program, block)


def pause_score(program: ProgramView) -> float:
    """Equation 11: higher is paused first (acting first, then shortest)."""
    return 1.0 / max(program.tokens, 1) + (1.0 if program.phase is Phase.ACTING else 0.0)


def restore_score(program: ProgramView, config: PolicyConfig) -> float:
    """Equation 10 with aging: higher is restored first (reasoning-ready first, then shortest, then oldest)."""
    aging = 1.0 + config.aging_rate * max(program.waiting_s, 0.0)
    ready = 1.0 if (program.ready or program.phase is Phase.REASONING) else 0.0
    return aging / max(program.tokens, 1) + ready


def restore_key(p: ProgramView, config: PolicyConfig) -> tuple[int, int, float, float, str]:
    """Sort key of the waiting queue: starving programs (oldest first), then programs in progress, then
    newcomers; within a class KV in a host tier first, then by restore score."""
    if p.waiting_s >= config.max_wait_s:
        return (0, 0, -p.waiting_s, 0.0, p.program_id)
    return (
        1 if p.in_progress else 2,
        0 if p.in_host_tier else 1,
        -restore_score(p, config),
        -p.waiting_s,
        p.program_id,
    )


class PolicyState(Protocol):
    """What one round reads. `ViewState` computes it from a full snapshot (the reference); the scheduler's
    ledger keeps it incrementally, so a round costs what changed, not the number of programs."""

    def backends(self) -> Sequence[BackendView]: ...

    def members(self, url: str) -> Sequence[ProgramView]:
        """ACTIVE programs placed on `url`."""
        ...

    def idle_members(self, url: str) -> Sequence[ProgramView]:
        """Members acting with a weight below their memory (decayed, or a tool judged long)."""
        ...

    def idle_held(self, url: str) -> float:
        """Memory of the idle members: the most a restore could free there."""
        ...

    def freeable_held(self, url: str, min_residency_s: float) -> float:
        """Memory of the idle members active at least `min_residency_s` (an upper bound of what pausing
        them frees now; cheap: no views)."""
        ...

    def weighted(self, url: str) -> float:
        """Weighted load of the members (the thrashing check)."""
        ...

    def held(self, url: str) -> float:
        """Memory of the members plus requests still running for paused programs (draining)."""
        ...

    def draining_weight(self, url: str) -> float:
        """Weighted load of the draining requests (counted against restores, not the thrashing check)."""
        ...

    def running(self, url: str) -> tuple[int, float]:
        """Programs with a request running on `url` (reasoning members and draining requests), and their
        memory (the work-conservation floor)."""
        ...

    def has_prefix(self, url: str, key: str) -> bool:
        """Whether a program on `url` (member or draining) already holds the shared prefix `key`."""
        ...

    def queue(self) -> Iterable[ProgramView]:
        """Ready paused programs in restore order."""
        ...

    def thrash_scope(self) -> Iterable[str]:
        """Backends whose thrashing check may have changed since the last round."""
        ...


class ViewState:
    """PolicyState from a full snapshot of programs: O(programs) per round."""

    def __init__(self, programs: Sequence[ProgramView], backends: Sequence[BackendView], config: PolicyConfig):
        self._backends = backends
        self._members: dict[str, list[ProgramView]] = {b.url: [] for b in backends}
        self._idle: dict[str, list[ProgramView]] = {b.url: [] for b in backends}
        self._weighted: dict[str, float] = dict.fromkeys(self._members, 0.0)
        self._held: dict[str, float] = dict.fromkeys(self._members, 0.0)
        self._draining: dict[str, float] = dict.fromkeys(self._members, 0.0)
        self._running: dict[str, list[float]] = {url: [0, 0.0] for url in self._members}
        self._prefixes: dict[str, dict[str, int]] = {url: {} for url in self._members}
        self._stranded: list[ProgramView] = []
        blocks = {b.url: max(b.block_size, 1) for b in backends}
        self._blocks = blocks
        for p in programs:
            if p.backend is None or p.status is Status.TERMINATED:
                continue
            if p.backend not in self._members:
                if p.status is Status.ACTIVE:
                    self._stranded.append(p)
                continue
            block = blocks[p.backend]
            if p.status is Status.ACTIVE:
                self._members[p.backend].append(p)
                self._weighted[p.backend] += weight(p, config, block)
                self._held[p.backend] += held(p, block)
                if is_idle(p, config):
                    self._idle[p.backend].append(p)
                if p.phase is Phase.REASONING:
                    self._running[p.backend][0] += 1
                    self._running[p.backend][1] += held(p, block)
            elif p.phase is Phase.REASONING:  # paused, its request still running there
                self._held[p.backend] += held(p, block)
                self._draining[p.backend] += weight(p, config, block)
                self._running[p.backend][0] += 1
                self._running[p.backend][1] += held(p, block)
            else:
                continue
            groups = self._prefixes[p.backend]
            if p.prefix_key is not None and p.prefix_key not in groups:
                shared = shared_held(p, block)  # held once, in full, while any program uses it
                groups[p.prefix_key] = shared
                self._held[p.backend] += shared
                self._weighted[p.backend] += shared
        self._queue = restore_order(programs, config)

    def backends(self) -> Sequence[BackendView]:
        return self._backends

    def members(self, url: str) -> Sequence[ProgramView]:
        return self._members.get(url, [])

    def idle_members(self, url: str) -> Sequence[ProgramView]:
        return self._idle.get(url, [])

    def idle_held(self, url: str) -> float:
        block = self._blocks.get(url, 1)
        return sum(held(p, block) for p in self._idle.get(url, []))

    def freeable_held(self, url: str, min_residency_s: float) -> float:
        block = self._blocks.get(url, 1)
        return sum(held(p, block) for p in self._idle.get(url, []) if p.active_s >= min_residency_s)

    def stranded(self) -> list[ProgramView]:
        """ACTIVE programs on a backend that is not configured any more."""
        return self._stranded

    def weighted(self, url: str) -> float:
        return self._weighted.get(url, 0.0)

    def held(self, url: str) -> float:
        return self._held.get(url, 0.0)

    def draining_weight(self, url: str) -> float:
        return self._draining.get(url, 0.0)

    def running(self, url: str) -> tuple[int, float]:
        count, memory = self._running.get(url, (0, 0.0))
        return int(count), float(memory)

    def has_prefix(self, url: str, key: str) -> bool:
        return key in self._prefixes.get(url, {})

    def queue(self) -> Iterable[ProgramView]:
        return self._queue

    def thrash_scope(self) -> Iterable[str]:
        return self._members.keys()


def restore_order(programs: Iterable[ProgramView], config: PolicyConfig) -> list[ProgramView]:
    """The waiting queue in the order restores are tried."""
    return sorted((p for p in programs if p.status is Status.PAUSED and p.ready), key=lambda p: restore_key(p, config))


class _Round:
    """One decision round over a PolicyState, with the loads its own decisions change kept as deltas."""

    def __init__(self, state: PolicyState, config: PolicyConfig) -> None:
        self.state = state
        self.config = config
        self.by_url = {b.url: b for b in state.backends()}
        self.usable = [b for b in self.by_url.values() if b.usable]
        self.pauses: list[Pause] = []
        self.restores: list[Restore] = []
        self.paused_now: set[str] = set()
        self._dw: dict[str, float] = {}  # change of the members' weighted load
        self._dh: dict[str, float] = {}  # change of the held load
        self._dd: dict[str, float] = {}  # change of the draining weight
        self._dr: dict[str, tuple[int, float]] = {}  # requests (and their memory) restored to run this round
        self._floor: tuple[int, bool] | None = None  # floor_open's answer, for a count of reserved backends
        self._victims: dict[str, list[ProgramView]] = {}
        self._freed: dict[str, float] = {}  # memory of acting members paused this round
        self._placed_prefixes: set[tuple[str, str]] = set()  # (backend, prefix) restored this round
        self._rooms: dict[tuple[int, int], tuple[float, str] | None] = {}  # best_room's answers this round
        self._room_valid = False
        # The state does not change during a round: its loads are read once per backend, then kept with
        # this round's own changes applied (a round touches them thousands of times on a long queue).
        self._limit = {url: config.lambda_max * b.capacity for url, b in self.by_url.items()}
        self._block = {url: max(b.block_size, 1) for url, b in self.by_url.items()}
        self._w: dict[str, float] = {}
        self._rw: dict[str, float] = {}
        self._h: dict[str, float] = {}
        self._max_limit = max((self._limit[b.url] for b in self.usable), default=0.0)

    # ---- loads ------------------------------------------------------------------------------

    def limit(self, url: str) -> float:
        return self._limit[url]

    def block(self, url: str) -> int:
        return self._block[url]

    def weighted(self, url: str) -> float:
        w = self._w.get(url)
        if w is None:
            w = self._w[url] = self.state.weighted(url) + self._dw.get(url, 0.0)
        return w

    def room_weighted(self, url: str) -> float:
        """Weighted load that restores are judged on: members plus draining requests."""
        rw = self._rw.get(url)
        if rw is None:
            rw = self._rw[url] = self.weighted(url) + self.state.draining_weight(url) + self._dd.get(url, 0.0)
        return rw

    def held(self, url: str) -> float:
        h = self._h.get(url)
        if h is None:
            h = self._h[url] = self.state.held(url) + self._dh.get(url, 0.0)
        return h

    def _add(self, deltas: dict[str, float], url: str, value: float) -> None:
        deltas[url] = deltas.get(url, 0.0) + value
        self._w.pop(url, None)
        self._rw.pop(url, None)
        self._h.pop(url, None)
        self._room_valid = False

    def pause(self, p: ProgramView, reason: PauseReason) -> None:
        self.pauses.append(Pause(p.program_id, p.backend, reason))
        self.paused_now.add(p.program_id)
        url = p.backend
        if url is None or url not in self.by_url or reason is PauseReason.BACKEND_DOWN:
            return
        w = weight(p, self.config, self.block(url))
        self._add(self._dw, url, -w)
        if p.phase is Phase.ACTING:
            self._add(self._dh, url, -held(p, self.block(url)))
            self._freed[url] = self._freed.get(url, 0.0) + held(p, self.block(url))
        else:  # a running request keeps its KV until it ends: it drains
            self._add(self._dd, url, w)

    # ---- 1 and 2: down backends, thrashing ----------------------------------------------------

    def evacuate(self) -> None:
        for b in self.by_url.values():
            if not b.usable:
                for p in self.state.members(b.url):
                    self.pause(p, PauseReason.BACKEND_DOWN)
        stranded = getattr(self.state, "stranded", None)
        for p in stranded() if stranded is not None else ():
            self.pause(p, PauseReason.BACKEND_DOWN)

    def relieve(self) -> None:
        usable = {b.url for b in self.usable}
        for url in self.state.thrash_scope():
            if url not in usable or self.weighted(url) <= self.limit(url) + _EPS:
                continue
            group = [p for p in self.state.members(url) if p.program_id not in self.paused_now]
            remaining = len(group)
            for p in sorted(group, key=lambda q: (-pause_score(q), q.program_id)):
                if self.weighted(url) <= self.limit(url) + _EPS:
                    break
                if remaining == 1:  # pausing the only program cannot help: it would come straight back
                    break
                if weight(p, self.config, self.block(url)) <= 0.0:
                    continue  # pausing it lowers no weighted load
                self.pause(p, PauseReason.THRASHING)
                remaining -= 1

    # ---- 3: restores --------------------------------------------------------------------------

    def need(self, p: ProgramView, url: str) -> float:
        """Its own memory, plus its shared prefix where no program holds it yet. A program larger than the
        whole limit still gets a backend, alone."""
        block = self.block(url)
        total = held(p, block)
        key = p.prefix_key
        if key is not None and (url, key) not in self._placed_prefixes and not self.state.has_prefix(url, key):
            total += shared_held(p, block)
        return min(total, self.limit(url))

    def size_eligible(self, p: ProgramView) -> list[BackendView]:
        """Backends that can hold the program whole; only if none can, the largest ones (alone)."""
        whole = [b for b in self.usable if size(p, self.block(b.url)) <= self.limit(b.url) + _EPS]
        if whole:
            return whole
        biggest = max((b.capacity for b in self.usable), default=0)
        return [b for b in self.usable if b.capacity == biggest]

    def victims(self, url: str) -> list[ProgramView]:
        """Acting members whose held room exceeds their weight (decayed, or a long tool), most idle first."""
        cached = self._victims.get(url)
        if cached is not None:
            return [q for q in cached if q.program_id not in self.paused_now]
        cfg, block = self.config, self.block(url)
        out = [
            q
            for q in self.state.idle_members(url)
            if q.program_id not in self.paused_now
            and q.active_s >= cfg.min_residency_s
            and weight(q, cfg, block) < held(q, block) - _EPS
        ]
        out.sort(key=lambda q: (weight(q, cfg, block) / max(held(q, block), 1.0), -held(q, block), q.program_id))
        self._victims[url] = out
        return out

    def freeable_bound(self, url: str) -> float:
        """At most what pausing idle members of `url` can still free (those paused this round are gone)."""
        return max(self.state.freeable_held(url, self.config.min_residency_s) - self._freed.get(url, 0.0), 0.0)

    def fits(self, p: ProgramView, b: BackendView, starving: bool) -> bool:
        url = b.url
        need, limit = self.need(p, url), self.limit(url)
        w = self.room_weighted(url)
        if not starving and w >= self.config.low_watermark * b.capacity - _EPS and w > 0:
            return False  # hysteresis: restore only below the low watermark
        if w + need > limit + _EPS:
            return False
        if self.held(url) + need <= limit + _EPS:
            return True
        if self.held(url) - self.freeable_bound(url) + need > limit + _EPS:
            return False  # even every idle member past its cooldown paused would not make room (cheap bound)
        freeable = sum(held(q, self.block(url)) for q in self.victims(url))
        return self.held(url) - freeable + need <= limit + _EPS

    def free_decayed(self, p: ProgramView, url: str) -> None:
        """Pause decayed acting members until the program fits the memory actually held."""
        need, limit = self.need(p, url), self.limit(url)
        for q in list(self.victims(url)):
            if self.held(url) + need <= limit + _EPS:
                break
            self.pause(q, PauseReason.TOOL if q.tool_marked else PauseReason.DECAY)

    def place(self, p: ProgramView, candidates: list[BackendView], starving: bool) -> tuple[str, bool] | None:
        """Previous backend while its prefix is likely cached, else the one with most weighted room."""
        prev = self.by_url.get(p.previous_backend) if p.previous_backend is not None else None
        if (
            prev is not None
            and prev in candidates
            and (p.paused_s < self.config.cache_affinity_s or p.in_host_tier)
            and self.fits(p, prev, starving)
        ):
            return prev.url, True

        # The most weighted room left after placing it first (a backend already holding its shared prefix
        # charges less): the first that fits is the best, and the held check, which may list a backend's
        # idle members, runs on as few backends as possible.
        def left(b: BackendView) -> tuple[float, str]:
            return (self.limit(b.url) - self.room_weighted(b.url) - self.need(p, b.url), b.url)

        if not candidates:
            return None
        best = max(candidates, key=left)  # usually fits: no need to order the rest
        if self.fits(p, best, starving):
            return best.url, False
        for b in sorted(candidates, key=left, reverse=True)[1:]:
            if self.fits(p, b, starving):
                return b.url, False
        return None

    def admit(self, p: ProgramView, url: str, affinity: bool, floor: bool = False) -> None:
        self.free_decayed(p, url)
        need = self.need(p, url)
        self._add(self._dw, url, need)
        self._add(self._dh, url, need)
        count, memory = self._dr.get(url, (0, 0.0))
        self._dr[url] = (count + 1, memory + need)
        self._floor = None
        self.restores.append(Restore(p.program_id, url, affinity, floor))
        if p.prefix_key is not None:
            self._placed_prefixes.add((url, p.prefix_key))

    # ---- work conservation ------------------------------------------------------------------------

    def running(self, url: str) -> tuple[int, float]:
        count, memory = self.state.running(url)
        extra = self._dr.get(url)
        return (count + extra[0], memory + extra[1]) if extra else (count, memory)

    def floor_open(self, reserved: set[str]) -> bool:
        """Whether some backend runs fewer requests than the floor: O(backends) once, then O(1) until a
        restore or a reservation changes it (a long queue asks for every program that fits nowhere)."""
        floor = self.config.min_running
        if floor <= 0:
            return False
        if self._floor is not None and self._floor[0] == len(reserved):  # `reserved` only grows in a round
            return self._floor[1]
        open_ = any(b.url not in reserved and self.running(b.url)[0] < floor for b in self.usable)
        self._floor = (len(reserved), open_)
        return open_

    def floor_place(self, p: ProgramView, reserved: set[str]) -> bool:
        """Work conservation: restore `p` on a backend running fewer requests than the floor, past the memory
        limit if need be, provided its request fits beside the ones running there (the engine then evicts
        idle programs' caches, never preempts a running request; the next round pauses acting programs
        until the held load is back under the limit). The least busy such backend, then the roomiest."""
        best: tuple[tuple[int, float, str], str] | None = None
        for b in self.size_eligible(p):
            url = b.url
            if url in reserved:
                continue
            count, memory = self.running(url)
            if count >= self.config.min_running or memory + self.need(p, url) > self.limit(url) + _EPS:
                continue
            key = (count, self.held(url), url)
            if best is None or key < best[0]:
                best = (key, url)
        if best is None:
            return False
        url = best[1]
        self.admit(p, url, p.previous_backend == url, floor=True)
        return True

    def best_room(self, closed: set[str], blocked: set[str] | None = None) -> tuple[float, str] | None:
        """The most room a non-starving program could get on one backend (below its low watermark, not
        `closed` (reserved), nor `blocked` for a newcomer), counting what pausing idle members past their
        cooldown would free, and that backend; None when none is open. A program needing more fits
        nowhere: most of a long queue is passed in O(1)."""
        if not self._room_valid:
            self._rooms.clear()
            self._room_valid = True
        key = (len(closed), -1 if blocked is None else len(blocked))  # the sets only grow within a round
        if key in self._rooms:
            return self._rooms[key]
        best: tuple[float, str] | None = None
        for b in self.usable:
            url = b.url
            w = self.room_weighted(url)
            if url in closed or (blocked is not None and url in blocked):
                continue
            if w >= self.config.low_watermark * b.capacity - _EPS and w > 0:
                continue
            limit = self.limit(url)
            room = limit - w
            if limit - self.held(url) < room:  # the held load binds: add what its idle members free
                room = min(room, limit - self.held(url) + self.freeable_bound(url))
            if best is None or (room, url) > best:
                best = (room, url)
        self._rooms[key] = best
        return best

    def restore(self) -> None:
        reserved: set[str] = set()  # held for a starving program: nobody else is placed there
        blocked_for_new: set[str] = set()  # a program in progress waits for room here: no newcomer takes it
        for p in self.state.queue():
            if p.program_id in self.paused_now:
                continue
            starving = p.waiting_s >= self.config.max_wait_s
            if not starving:
                best = self.best_room(reserved, None if p.in_progress else blocked_for_new)
                if best is None:
                    if self.floor_open(reserved):
                        self.floor_place(p, reserved)
                        continue
                    if p.in_progress:
                        break  # every backend is at its low watermark: nothing else can be placed this round
                    continue  # (a newcomer: the rest may be closed to newcomers only)
                room, roomiest = best
                if room + _EPS < held(p) and size(p) <= self._max_limit:  # fits nowhere
                    if self.floor_open(reserved) and self.floor_place(p, reserved):
                        continue
                    if p.in_progress:
                        blocked_for_new.add(roomiest)  # it waits for the roomiest backend: no newcomer takes it
                    continue
            eligible = self.size_eligible(p)
            candidates = [
                b
                for b in eligible
                if b.url not in reserved and (p.in_progress or starving or b.url not in blocked_for_new)
            ]
            placed = self.place(p, candidates, starving)
            if placed is not None:
                self.admit(p, *placed)
                continue
            if not starving and self.floor_open(reserved) and self.floor_place(p, reserved):
                continue
            target = self._most_room(candidates or eligible)
            if target is None:
                continue
            if starving:
                if self.make_room(p, target):
                    self.admit(p, target, False)
                else:
                    reserved.add(target)  # the room it needs there can only grow
                    self._room_valid = False
            elif p.in_progress:
                blocked_for_new.add(target)

    def _most_room(self, backends: list[BackendView]) -> str | None:
        if not backends:
            return None
        return max(backends, key=lambda b: (self.limit(b.url) - self.held(b.url), b.url)).url

    def make_room(self, p: ProgramView, url: str) -> bool:
        """Preempt acting members of `url` (active at least min_residency_s) so a starving program fits."""
        need, limit = self.need(p, url), self.limit(url)
        victims = sorted(
            (
                q
                for q in self.state.members(url)
                if q.program_id not in self.paused_now
                and q.phase is Phase.ACTING
                and q.active_s >= self.config.min_residency_s
            ),
            key=lambda q: (-pause_score(q), q.program_id),
        )
        if self.held(url) - sum(held(q, self.block(url)) for q in victims) + need > limit + _EPS:
            return False
        for q in victims:
            if self.held(url) + need <= limit + _EPS and self.room_weighted(url) + need <= limit + _EPS:
                break
            self.pause(q, PauseReason.STARVATION)
        return self.held(url) + need <= limit + _EPS


def decide_on(state: PolicyState, config: PolicyConfig) -> Decisions:
    """One round of the policy: evacuate down backends, relieve thrashing, then restore from the queue."""
    round_ = _Round(state, config)
    round_.evacuate()
    round_.relieve()
    round_.restore()
    return Decisions(tuple(round_.pauses), tuple(round_.restores))


def decide(programs: Sequence[ProgramView], backends: Sequence[BackendView], config: PolicyConfig) -> Decisions:
    """The reference round on a full snapshot (tests, and the meaning of every incremental state)."""
    return decide_on(ViewState(programs, backends, config), config)
