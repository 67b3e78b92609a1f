"""The scheduler's loads, kept incrementally: a PolicyState whose round costs what changed.

Every program contributes to exactly one backend's sums (as a member, or as a draining request of a paused
program), and the scheduler calls `update` whenever something the policy reads changes. Time decay is kept
exact without touching every program each round: sum(c_i * exp(-(now - s_i) / tau)) is
exp(-(now - t0) / tau) * sum(c_i * exp((s_i - t0) / tau)), rebased now and then so nothing overflows.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from thunder_sched.config import PolicyConfig
from thunder_sched.policy import BackendView, Phase, ProgramView, Status, restore_key
from thunder_sched.program import Program

_REBASE_TAUS = 20.0  # rebase the decay sums once the reference time is this many tau old


@dataclass(slots=True)
class _Sums:
    fixed: float = 0.0  # weighted load that does not decay (reasoning, tool-judged acting)
    decaying: float = 0.0  # sum of c * exp((acting_since - t0) / tau) of acting members without tool events
    held: float = 0.0  # members' memory plus draining requests'
    draining: float = 0.0  # weighted load of draining requests
    idle_held: float = 0.0  # memory of idle members (decaying, or a tool judged long)
    running: int = 0  # programs with a request running there (reasoning members and draining requests)
    running_held: float = 0.0  # their memory
    members: dict[str, Program] = field(default_factory=dict)
    idle: dict[str, Program] = field(default_factory=dict)
    prefixes: dict[str, list[int]] = field(default_factory=dict)  # shared prefix -> [users, tokens]


@dataclass(frozen=True, slots=True)
class _Contribution:
    url: str
    member: bool
    fixed: float
    decaying: float
    held: float
    draining: float
    idle: bool = False
    prefix_key: str | None = None
    prefix_tokens: int = 0
    running: bool = False


class Ledger:
    def __init__(self, config: PolicyConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._sums: dict[str, _Sums] = {}
        self._contrib: dict[str, _Contribution] = {}
        self._t0 = clock()
        self._ready: dict[str, Program] = {}
        # The waiting queue in restore order; an entry is live while its sequence number is its program's
        # latest (a program that waits again gets a new entry: the old one is skipped, dropped at a rebuild).
        self._queue: list[tuple[tuple[int, int, float, float, str], int, str]] = []
        self._entry: dict[str, int] = {}
        self._seq = 0
        self._dirty: set[str] = set()
        self._backends: Sequence[BackendView] = ()
        self._now = self._t0
        self._blocks: dict[str, int] = {}

    # ---- keeping the sums -------------------------------------------------------------------

    def _sums_for(self, url: str) -> _Sums:
        sums = self._sums.get(url)
        if sums is None:
            sums = self._sums[url] = _Sums()
        return sums

    def _contribution(self, p: Program, now: float) -> _Contribution | None:
        cfg = self.config
        if p.status is Status.ACTIVE and p.backend is not None:
            url, reasoning = p.backend, p.phase is Phase.REASONING
        elif p.status is Status.PAUSED and p.phase is Phase.REASONING:
            url, reasoning = next((b for b, n in p.in_flight.items() if n), None), True
            if url is None:
                return None
        else:
            return None
        block = self._blocks.get(url, 1)
        shared = p.prefix_tokens // block * block if p.prefix_key is not None else 0
        prefix = (p.prefix_key, shared) if p.prefix_key is not None else (None, 0)
        reserve = max(0, p.reserve_tokens - p.streamed) if reasoning else 0
        own = max(p.tokens - shared, 0) + reserve
        size = float(-(-own // block) * block)
        if p.status is Status.PAUSED:  # its request still runs there: it holds memory until it ends
            return _Contribution(url, False, 0.0, 0.0, size, size, False, *prefix, running=True)
        if reasoning or not cfg.time_decay or (cfg.tool_aware and p.tool_marked is not None):
            marked = not reasoning and cfg.tool_aware and bool(p.tool_marked)
            return _Contribution(url, True, 0.0 if marked else size, 0.0, size, 0.0, marked, *prefix, running=reasoning)
        decaying = size * math.exp((p.acting_since - self._t0) / cfg.tau_s)
        return _Contribution(url, True, 0.0, decaying, size, 0.0, True, *prefix)

    def set_blocks(self, blocks: dict[str, int], programs: Iterable[Program]) -> None:
        """The engines' KV block sizes; a change (a backend first seen, or replaced) recounts everyone."""
        blocks = {url: max(b, 1) for url, b in blocks.items()}
        if blocks == self._blocks:
            return
        self._blocks = blocks
        for p in programs:
            self.update(p)

    def _apply(self, pid: str, c: _Contribution, sign: float, p: Program) -> None:
        s = self._sums_for(c.url)
        s.fixed += sign * c.fixed
        s.decaying += sign * c.decaying
        s.held += sign * c.held
        s.draining += sign * c.draining
        if c.idle:
            s.idle_held += sign * c.held
        if c.running:
            s.running += int(sign)
            s.running_held += sign * c.held
        if c.prefix_key is not None:  # a shared prefix is held once, in full, while anyone uses it
            entry = s.prefixes.get(c.prefix_key)
            if sign > 0:
                if entry is None:
                    s.prefixes[c.prefix_key] = [1, c.prefix_tokens]
                    s.fixed += c.prefix_tokens
                    s.held += c.prefix_tokens
                else:
                    entry[0] += 1
            elif entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del s.prefixes[c.prefix_key]
                    s.fixed -= entry[1]
                    s.held -= entry[1]
        if c.member:
            if sign > 0:
                s.members[pid] = p
                if c.idle:
                    s.idle[pid] = p
            else:
                s.members.pop(pid, None)
                s.idle.pop(pid, None)

    def update(self, p: Program) -> None:
        """Re-read one program after any change of what the policy sees of it."""
        now = self._clock()
        pid = p.program_id
        old = self._contrib.pop(pid, None)
        if old is not None:
            self._apply(pid, old, -1.0, p)
        new = self._contribution(p, now) if p.status is not Status.TERMINATED else None
        if new is not None:
            self._apply(pid, new, 1.0, p)
            self._contrib[pid] = new
            if new.member and (
                old is None or new.fixed + new.decaying > old.fixed + old.decaying or old.url != new.url
            ):
                self._dirty.add(new.url)  # its weighted load grew: the thrashing check may change
        ready = p.status is Status.PAUSED and p.held > 0
        if ready and pid not in self._ready:
            self._ready[pid] = p
            self._enqueue(p, now)
        elif not ready and pid in self._ready:
            del self._ready[pid]  # its queue entry is skipped and dropped at the next rebuild

    def remove(self, p: Program) -> None:
        old = self._contrib.pop(p.program_id, None)
        if old is not None:
            self._apply(p.program_id, old, -1.0, p)
        self._ready.pop(p.program_id, None)

    def _enqueue(self, p: Program, now: float) -> None:
        self._seq += 1
        self._entry[p.program_id] = self._seq
        bisect.insort(self._queue, (restore_key(p.view(now), self.config), self._seq, p.program_id))

    def _rebuild_queue(self, now: float) -> None:
        """Recompute the queue order (aging and starvation move programs over time)."""
        self._queue, self._entry = [], {}
        for p in self._ready.values():
            self._seq += 1
            self._entry[p.program_id] = self._seq
            self._queue.append((restore_key(p.view(now), self.config), self._seq, p.program_id))
        self._queue.sort()

    def refresh(self) -> None:
        """Periodic upkeep (every check interval): queue order, decay rebase, and every backend's check."""
        now = self._clock()
        self._rebuild_queue(now)
        if (now - self._t0) / self.config.tau_s > _REBASE_TAUS:
            self._t0 = now
            for pid, c in list(self._contrib.items()):
                if c.decaying:
                    p = self._sums_for(c.url).members[pid]
                    self.update(p)
            for s in self._sums.values():  # drop float residue of programs that left
                if not any(self._contrib[pid].decaying for pid in s.members):
                    s.decaying = 0.0
        self._dirty.update(self._sums)

    # ---- PolicyState --------------------------------------------------------------------------

    def begin_round(self, backends: Sequence[BackendView]) -> None:
        self._backends = backends
        self._now = self._clock()

    def end_round(self) -> None:
        self._dirty.clear()

    def backends(self) -> Sequence[BackendView]:
        return self._backends

    def members(self, url: str) -> Sequence[ProgramView]:
        s = self._sums.get(url)
        if s is None:
            return []
        now = self._now
        return [p.view(now) for p in s.members.values()]

    def idle_members(self, url: str) -> Sequence[ProgramView]:
        s = self._sums.get(url)
        if s is None:
            return []
        now = self._now
        return [p.view(now) for p in s.idle.values()]

    def idle_held(self, url: str) -> float:
        s = self._sums.get(url)
        return s.idle_held if s is not None else 0.0

    def freeable_held(self, url: str, min_residency_s: float) -> float:
        s = self._sums.get(url)
        if s is None:
            return 0.0
        since = self._now - min_residency_s
        return sum(
            self._contrib[pid].held for pid, p in s.idle.items() if p.activated_at is None or p.activated_at <= since
        )

    def weighted(self, url: str) -> float:
        s = self._sums.get(url)
        if s is None:
            return 0.0
        if not s.decaying:
            return s.fixed
        return s.fixed + s.decaying * math.exp(-(self._now - self._t0) / self.config.tau_s)

    def held(self, url: str) -> float:
        s = self._sums.get(url)
        return s.held if s is not None else 0.0

    def draining_weight(self, url: str) -> float:
        s = self._sums.get(url)
        return s.draining if s is not None else 0.0

    def running(self, url: str) -> tuple[int, float]:
        s = self._sums.get(url)
        return (s.running, s.running_held) if s is not None else (0, 0.0)

    def has_prefix(self, url: str, key: str) -> bool:
        s = self._sums.get(url)
        return s is not None and key in s.prefixes

    def queue(self) -> Iterator[ProgramView]:
        now = self._now
        for p in self.queued():
            yield p.view(now)

    def queued(self) -> Iterator[Program]:
        """Ready paused programs in the order rounds try them (their live queue entries)."""
        for _, seq, pid in self._queue:
            p = self._ready.get(pid)
            if p is not None and self._entry.get(pid) == seq:
                yield p

    def thrash_scope(self) -> Iterable[str]:
        return list(self._dirty)

    # ---- checks ----------------------------------------------------------------------------------

    def check_against(self, views: Sequence[ProgramView], backends: Sequence[BackendView]) -> list[str]:
        """Differences from a full recount (tests): empty when the incremental sums are right."""
        from thunder_sched.policy import ViewState

        ref = ViewState(views, backends, self.config)
        self.begin_round(backends)
        problems = []
        for b in backends:
            for name, mine, theirs in (
                ("idle_held", self.idle_held(b.url), ref.idle_held(b.url)),
                ("freeable_held", self.freeable_held(b.url, 5.0), ref.freeable_held(b.url, 5.0)),
                ("weighted", self.weighted(b.url), ref.weighted(b.url)),
                ("held", self.held(b.url), ref.held(b.url)),
                ("draining", self.draining_weight(b.url), ref.draining_weight(b.url)),
                ("running", self.running(b.url)[0], ref.running(b.url)[0]),
                ("running_held", self.running(b.url)[1], ref.running(b.url)[1]),
            ):
                if not math.isclose(mine, theirs, rel_tol=1e-6, abs_tol=1e-3):
                    problems.append(f"{b.url} {name}: ledger {mine} != recount {theirs}")
            if {v.program_id for v in self.members(b.url)} != {v.program_id for v in ref.members(b.url)}:
                problems.append(f"{b.url} members differ")
        mine_q = [v.program_id for v in self.queue()]
        if sorted(mine_q) != sorted(v.program_id for v in ref.queue()):
            problems.append(f"queue differs: {mine_q}")
        return problems
