"""The scheduler: owns program and backend state, applies the pure policy, holds and admits requests.

Everything here runs on one event loop; state changes happen between awaits, so no locks are needed.
The check (`reschedule`) runs every interval, on request arrival and end, and on tool_end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from thunder_sched.config import SchedulerConfig
from thunder_sched.errors import (
    BadRequestError,
    NoBackendError,
    ProgramNotFoundError,
    ProgramTerminatedError,
    program_id_or_400,
)
from thunder_sched.events import ToolEventLike
from thunder_sched.ledger import Ledger
from thunder_sched.notifier import ProgramEndCallback, ProgramEndNotifier
from thunder_sched.policy import (
    BackendView,
    Decisions,
    PauseReason,
    Phase,
    ProgramView,
    Status,
    decide_on,
)
from thunder_sched.program import Program, ProgramInfo, Usage
from thunder_sched.replicas import BackendPool, HealthChange
from thunder_sched.tokens import CharsPerToken, Endpoint, prompt_chars, prompt_token_ids_count, tokenize_count
from thunder_sched.tool_model import ToolDurationModel, tool_key

log = logging.getLogger(__name__)

MAX_PREFIXES = 4096  # shared prefixes remembered (their token counts)


@dataclass(eq=False, slots=True)
class Admission:
    """One admitted request: the program and the backend it must go to. `Scheduler.finish` ends it."""

    program: Program
    backend: str
    prompt_chars: int
    estimated_tokens: int
    done: bool = False
    streamed: int = 0  # content events seen so far (about one token each)


@dataclass(slots=True)
class SchedulerStats:
    pauses: Counter[str] = field(default_factory=Counter)
    restores: int = 0
    admissions: int = 0
    terminated: Counter[str] = field(default_factory=Counter)
    kv_lost: int = 0
    flaps: int = 0  # restored within flap_window_s of a pause
    tool_pauses_premature: int = 0  # paused for a tool that then ended within tool_pause_s
    tool_pauses_right: int = 0  # paused for a tool that ran on past tool_pause_s
    late_restores: int = 0  # a ready program of a paused program waited more than late_restore_s
    floor_restores: int = 0  # restores (or admissions) past the memory limit by work conservation
    reschedules: int = 0


@dataclass(frozen=True, slots=True)
class SchedulerCounts:
    """Counts for /metrics."""

    active: int
    paused: int
    waiting: int
    backend_capacity: dict[str, int]
    backend_used: dict[str, float]
    backend_healthy: dict[str, bool]
    backend_host_tier: dict[str, int]
    backend_host_tier_used: dict[str, int]


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        *,
        on_program_end: ProgramEndCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backends = BackendPool(
            config.backends,
            timeout_s=config.backend_timeout_s,
            failures_to_down=config.backend_failures_to_down,
            host_tier_tokens=config.host_tier_tokens,
        )
        self.stats = SchedulerStats()
        self._clock = clock
        self._programs: dict[str, Program] = {}
        self._terminated: OrderedDict[str, ProgramInfo] = OrderedDict()
        self._notifier = ProgramEndNotifier(on_program_end, config.env_manager_url, config.env_manager_token)
        self._chars_per_token = CharsPerToken(config.default_chars_per_token)
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unusable_since: float | None = None
        self._restore_listeners: list[Callable[[str], None]] = []
        self._tools = ToolDurationModel()
        self._kick_pending = False
        self._ledger = Ledger(config.policy, clock)
        self._views_cache: list[BackendView] | None = None
        self._prefix_tokens: OrderedDict[str, int] = OrderedDict()  # shared prefix -> its tokens (estimate)

    def add_restore_listener(self, listener: Callable[[str], None]) -> None:
        """Called synchronously with a program id just before a paused program is restored (not on its first
        admission): the combined server prepares the program's environment while its held request runs.
        Must not block; an exception is logged and ignored."""
        self._restore_listeners.append(listener)

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("scheduler not started: run the app's lifespan (or await Scheduler.start)")
        return self._client

    async def start(self, client: httpx.AsyncClient) -> None:
        """Read every backend's capacity once, then run the periodic check and refresh loops."""
        self._client = client
        self._notifier.bind(client)
        for change in await self.backends.refresh(client):
            self._on_health(change)
        self._views_cache = None
        self._tasks = [
            asyncio.create_task(self._every(self.config.interval_s, self.tick), name="sched-check"),
            asyncio.create_task(
                self._every(self.config.backend_refresh_s, self.refresh_backends), name="sched-backends"
            ),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._notifier.close()
        self._client = None

    async def _every(self, period_s: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                result = job()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a failed round must not stop scheduling
                log.exception("periodic job %s failed", getattr(job, "__name__", job))

    async def refresh_backends(self) -> None:
        changes = await self.backends.refresh(self.client)
        self._views_cache = None
        for change in changes:
            self._on_health(change)
        self.reschedule()

    def tick(self) -> Decisions:
        self._expire_inactive()
        backends = self._backend_views()
        if any(b.host_tier_tokens for b in backends):  # O(paused programs): once per interval, not per round
            self._account_host_tiers(backends)
        self._ledger.refresh()
        return self.reschedule()

    # ---- the check -------------------------------------------------------------------------------

    def kick(self) -> None:
        """Ask for a reschedule at the end of this event-loop turn: many events in one turn cost one round."""
        if self._kick_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (synchronous caller): decide now
            self.reschedule()
            return
        self._kick_pending = True
        loop.call_soon(self._kicked)

    def _kicked(self) -> None:
        self._kick_pending = False
        try:
            self.reschedule()
        except Exception:  # a failed round must not stop scheduling; the periodic check retries
            log.exception("reschedule failed")

    def views(self, now: float) -> list[ProgramView]:
        """The policy's snapshot of every live program (status pages, tests; rounds use the ledger)."""
        return [p.view(now) for p in self._programs.values()]

    def reschedule(self) -> Decisions:
        """Decide on the incrementally kept loads and apply. Synchronous: nothing can interleave."""
        now = self._clock()
        self.stats.reschedules += 1
        backends = self._backend_views()
        self._ledger.begin_round(backends)
        try:
            decisions = decide_on(self._ledger, self.config.policy)
        finally:
            self._ledger.end_round()
        for pause in decisions.pauses:
            self._pause(self._programs[pause.program_id], pause.reason, now)
        for restore in decisions.restores:
            if restore.floor:
                self.stats.floor_restores += 1
            self._restore(self._programs[restore.program_id], restore.backend, now)
        return decisions

    def _backend_views(self) -> list[BackendView]:
        """Backend views change only with a probe or a health change: cached between them."""
        if self._views_cache is None:
            self._views_cache = self.backends.views()
            self._ledger.set_blocks({b.url: b.block_size for b in self._views_cache}, self._programs.values())
        return self._views_cache

    def restore_queue(self, count: int) -> list[str]:
        """The ids of the `count` ready paused programs the policy will try to restore first, in its order
        (one-step anonymous requests left out)."""
        if count <= 0:
            return []
        ids = (p.program_id for p in self._ledger.queued() if not p.ephemeral)  # the queue rounds read
        return list(itertools.islice(ids, count))

    def ledger_problems(self) -> list[str]:
        """Differences between the incremental loads and a full recount (tests; empty when consistent)."""
        return self._ledger.check_against(self.views(self._clock()), self._backend_views())

    def _account_host_tiers(self, backends: list[BackendView]) -> None:
        """A paused program's KV stays in its backend's host tier while the programs paused after it
        leave room: the tier is filled most-recently-paused first (it evicts least-recently-used)."""
        tier_size = {b.url: b.host_tier_tokens for b in backends if b.host_tier_tokens > 0 and b.healthy}
        used = dict.fromkeys(tier_size, 0)
        paused = sorted(
            (p for p in self._programs.values() if p.status is Status.PAUSED and p.paused_at is not None),
            key=lambda p: -(p.paused_at or 0.0),
        )
        for p in self._programs.values():
            p.in_host_tier = False
        for p in paused:
            url = p.previous_backend
            if url in tier_size and used[url] + p.tokens <= tier_size[url]:
                used[url] += p.tokens
                p.in_host_tier = True

    def _pause(self, p: Program, reason: PauseReason, now: float) -> None:
        log.debug("pause %s on %s (%s, %d tokens)", p.program_id, p.backend, reason, p.tokens)
        if reason is PauseReason.BACKEND_DOWN:
            p.previous_backend = None  # its KV died with the backend: no affinity
            p.kv_lost += 1
            self.stats.kv_lost += 1
        else:
            p.previous_backend = p.backend
        p.status = Status.PAUSED
        p.backend = None
        p.paused_at = now
        p.last_pause_reason = reason.value
        p.tool_paused_at = now if reason is PauseReason.TOOL else None
        p.pauses += 1
        self.stats.pauses[reason.value] += 1
        if p.held and p.ready_since is None:
            p.ready_since = now
        p.wake.clear()
        self._ledger.update(p)

    def _restore(self, p: Program, backend: str, now: float) -> None:
        log.debug("restore %s on %s (%d tokens)", p.program_id, backend, p.tokens)
        if p.ever_active:
            for listener in self._restore_listeners:
                try:
                    listener(p.program_id)
                except Exception:  # a listener must never stop scheduling
                    log.exception("restore listener failed for program %s", p.program_id)
        if p.ever_active and p.paused_at is not None and p.last_pause_reason != PauseReason.BACKEND_DOWN.value:
            if now - p.paused_at < self.config.policy.flap_window_s:
                p.flaps += 1
                self.stats.flaps += 1
            if p.ready_since is not None and now - p.ready_since > self.config.late_restore_s:
                self.stats.late_restores += 1
        p.status = Status.ACTIVE
        p.backend = backend
        p.activated_at = now
        p.ready_since = None
        p.in_host_tier = False
        if p.ever_active:
            p.restores += 1
            self.stats.restores += 1
        else:
            self.stats.admissions += 1
        p.ever_active = True
        p.wake.set()
        self._ledger.update(p)

    def _on_health(self, change: HealthChange) -> None:
        self._views_cache = None
        if not change.healthy:
            for p in self._programs.values():
                if p.previous_backend == change.url:
                    p.previous_backend = None
        self.reschedule()

    # ---- request path ----------------------------------------------------------------------------

    def _program(self, program_id: str, *, ephemeral: bool = False) -> Program:
        p = self._programs.get(program_id)
        if p is None:
            now = self._clock()
            p = Program(program_id, created_at=now, ephemeral=ephemeral, acting_since=now, last_activity=now)
            self._programs[program_id] = p
            self._terminated.pop(program_id, None)  # a released id reused: a new program
        return p

    async def _estimate(self, program: Program | None, endpoint: Endpoint, body: dict[str, Any]) -> tuple[int, int]:
        chars = prompt_chars(endpoint, body)
        exact = prompt_token_ids_count(endpoint, body)
        if exact is not None:
            return chars, exact
        first = program is None or not program.tokens_exact
        if first and program is not None and self.config.tokenize_first_request:
            usable = self.backends.usable()
            if usable:
                counted = await tokenize_count(
                    self.client, usable[0].url, endpoint, body, self.config.backend_timeout_s
                )
                if counted is not None:
                    return chars, counted
        ratio = program.chars_per_token if program is not None else None
        return chars, self._chars_per_token.estimate(chars, ratio)

    async def admit(self, program_id: str | None, endpoint: Endpoint, body: dict[str, Any]) -> Admission:
        """Register the request with its program and wait until the program is ACTIVE on a usable backend.
        A paused program's request is held here, without error, until the policy restores it."""
        if program_id is not None:
            program_id_or_400(program_id)
        ephemeral = program_id is None
        pid = program_id if program_id is not None else f"anon-{uuid.uuid4().hex}"
        chars, estimate = await self._estimate(None if ephemeral else self._program(pid), endpoint, body)
        p = self._program(pid, ephemeral=ephemeral)  # may have been released during the estimate
        now = self._clock()
        p.held += 1
        p.last_activity = now
        p.tokens = max(estimate, 1)
        p.tokens_exact = False
        p.reserve_tokens = self._decode_reserve(p, body)
        p.streamed = 0
        p.prefix_key, p.prefix_tokens = self._shared_prefix(p, endpoint, body)
        if p.tools_running:  # a request means the agent reasons again: a lost tool_end cannot keep it acting
            self._end_tool(p, now, None, every=True)
        if p.status is Status.PAUSED and p.ready_since is None:
            p.ready_since = now
        self._ledger.update(p)
        try:
            self.kick()
            backend = await self._wait_active(p)
        finally:
            p.held -= 1
            if p.held == 0:
                p.ready_since = None
            self._ledger.update(p)
        p.in_flight[backend] = p.in_flight.get(backend, 0) + 1
        self._ledger.update(p)
        return Admission(p, backend, chars, p.tokens)

    def _decode_reserve(self, p: Program, body: dict[str, Any]) -> int:
        """Room the response will take: the program's observed output length (with a margin) when known,
        else a default; never more than the request's own max_tokens."""
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        cap = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None
        if p.output_tokens_ema is not None:
            guess = int(p.output_tokens_ema * 1.25) + 1
        else:
            guess = self.config.decode_reserve_tokens
        return min(guess, cap) if cap is not None else guess

    def _shared_prefix(self, p: Program, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str | None, int]:
        """The prompt prefix this request shares with other programs: its system message and tool schemas,
        for the same model and cache salt. The engine caches it once per backend, so the ledger counts it
        once (agent fleets share long system prompts: counting them per program under-admits)."""
        if endpoint == "completion" or not self.config.policy.shared_prefixes:
            return None, 0
        if endpoint == "messages":  # the Messages API's `system` field (a string or text blocks)
            content = body.get("system")
            if not content:
                return None, 0
        else:
            messages = body.get("messages")
            first = messages[0] if isinstance(messages, list) and messages else None
            if not isinstance(first, dict) or first.get("role") not in ("system", "developer"):
                return None, 0
            content = first.get("content")
        text = content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str)
        tools = body.get("tools")
        tools_text = json.dumps(tools, sort_keys=True, default=str) if tools else ""
        digest = hashlib.blake2b(digest_size=12)
        for part in (str(body.get("model")), str(body.get("cache_salt")), tools_text, text):
            digest.update(part.encode("utf-8", "replace") + b"\0")
        key = digest.hexdigest()
        tokens = self._prefix_tokens.get(key)
        if tokens is None:
            # An estimate on the low side: over-counting sharing would over-commit the pool.
            tokens = int(0.9 * self._chars_per_token.estimate(len(text) + len(tools_text), p.chars_per_token))
            self._prefix_tokens[key] = tokens
            while len(self._prefix_tokens) > MAX_PREFIXES:
                self._prefix_tokens.popitem(last=False)
        if tokens <= 0 or tokens >= p.tokens:
            return None, 0
        return key, tokens

    def progress(self, admission: Admission, events: int) -> None:
        """Streamed content events of a running request: the context grows while it generates."""
        if admission.done or events <= 0:
            return
        admission.streamed += events
        p = admission.program
        p.streamed += events
        p.tokens += events
        if p.status is not Status.TERMINATED:
            self._ledger.update(p)

    async def _wait_active(self, p: Program) -> str:
        while True:
            if p.status is Status.TERMINATED:
                raise ProgramTerminatedError(p.program_id, p.terminated_reason or "terminated")
            if p.status is Status.ACTIVE and p.backend is not None:
                if self.backends.get(p.backend).healthy:
                    return p.backend
                self.reschedule()  # its backend went down: the policy moves it to the queue
                continue
            self._check_backends_usable()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.wake.wait(), timeout=min(1.0, self.config.interval_s))

    def _check_backends_usable(self) -> None:
        now = self._clock()
        if self.backends.usable():
            self._unusable_since = None
            return
        if self._unusable_since is None:
            self._unusable_since = now
        elif now - self._unusable_since > self.config.no_backend_timeout_s:
            states = ", ".join(
                f"{b.url} ({'up' if b.healthy else 'down'}, capacity {b.capacity}, {b.last_error or 'no error'})"
                for b in self.backends.backends.values()
            )
            raise NoBackendError(
                f"no usable backend for {self.config.no_backend_timeout_s:.0f}s: {states}; "
                "check that the vLLM servers run and expose vllm:cache_config_info on /metrics"
            )

    def finish(
        self,
        admission: Admission,
        *,
        usage: Usage | None,
        completion_estimate: int = 0,
        completed: bool,
        backend_error: str | None = None,
        definitive: bool = False,
    ) -> None:
        """End one request, whatever happened to it (done, client gone, backend failure). Idempotent."""
        if admission.done:
            return
        admission.done = True
        p, now = admission.program, self._clock()
        left = p.in_flight.get(admission.backend, 0) - 1
        if left > 0:
            p.in_flight[admission.backend] = left
        else:
            p.in_flight.pop(admission.backend, None)
        p.streamed = max(0, p.streamed - admission.streamed)
        if not p.running and not p.held:
            p.reserve_tokens = 0
        if usage is not None:
            p.tokens = usage.prompt_tokens + usage.completion_tokens
            p.tokens_exact = True
            ema = p.output_tokens_ema
            out = float(usage.completion_tokens)
            p.output_tokens_ema = out if ema is None else 0.7 * ema + 0.3 * out
            ratio = self._chars_per_token.observe(admission.prompt_chars, usage.prompt_tokens)
            if ratio is not None:
                p.chars_per_token = ratio
        else:
            p.tokens = admission.estimated_tokens + max(completion_estimate, admission.streamed)
            p.tokens_exact = False
        if completed:
            p.steps += 1
        p.last_activity = now
        if p.phase is Phase.ACTING:
            p.acting_since = now
        if backend_error is not None:
            change = self.backends.report_failure(admission.backend, backend_error, definitive=definitive)
            if change is not None:
                self._on_health(change)
        if p.status is Status.TERMINATED:
            return
        self._ledger.update(p)
        if p.ephemeral and not p.running and not p.held:
            self._terminate(p, "one-step request done")
        self.kick()

    # ---- tool events -----------------------------------------------------------------------------

    async def on_tool_event(self, event: ToolEventLike) -> None:
        """In-process listener for the env manager's tool_start / tool_end events."""
        kind = getattr(event, "kind", None)
        pid = getattr(event, "program_id", None)
        if kind not in ("tool_start", "tool_end"):
            raise BadRequestError(f"tool event kind must be 'tool_start' or 'tool_end', got {kind!r}")
        pid = program_id_or_400(pid, "in the tool event")
        if pid in self._terminated:
            log.debug("ignoring %s for terminated program %s", kind, pid)
            return
        p = self._program(pid)
        now = self._clock()
        p.last_activity = now
        sandbox = getattr(event, "sandbox_id", None)
        if sandbox:
            p.sandboxes.add(str(sandbox))
        tool = getattr(event, "tool", None)
        if tool:
            p.last_tool = str(tool)[:256]
        if kind == "tool_start":
            p.tools_running += 1
            p.tool_key = tool_key(p.last_tool, getattr(event, "command", None))
            p.tool_started_at = now
            if not p.running and not p.held:
                p.acting_since = now  # t of equation 7 is the tool's execution time
            if self.config.policy.tool_aware:
                self._judge_tool(p)
            self._ledger.update(p)
            if p.tool_marked:
                self.kick()  # a tool known to run long frees its room at once
            return
        duration = getattr(event, "duration_s", None)
        self._end_tool(p, now, duration if isinstance(duration, int | float) else None, every=False)
        p.last_tool_duration_s = duration
        p.last_exit_code = getattr(event, "exit_code", None)
        if not p.running and not p.held:
            # The tool is done: the agent is about to reason again, so its cache weighs in full.
            p.acting_since = now
        self._ledger.update(p)
        self.kick()

    def _judge_tool(self, p: Program) -> None:
        """Tool-aware pausing: from the learned durations of this tool, when will it be expected to need more
        than tool_pause_s more (with a host tier, a fraction of it: a restore is a copy)? Mark it then."""
        if p.mark_timer is not None:
            p.mark_timer.cancel()
            p.mark_timer = None
        policy = self.config.policy
        backend = p.backend or p.previous_backend
        tier = backend is not None and self.backends.get(backend).view().host_tier_tokens > 0
        threshold = policy.tool_pause_s * (policy.host_tier_cost_ratio if tier else 1.0)
        assert p.tool_key is not None and p.tool_started_at is not None
        delay = self._tools.mark_delay(p.program_id, p.tool_key, threshold)
        if delay is None:
            p.tool_marked = None  # never seen: time decay judges it
            return
        p.tool_marked = delay <= 0.0
        if not p.tool_marked:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            p.mark_timer = loop.call_later(delay, self._mark_tool, p)

    def _mark_tool(self, p: Program) -> None:
        p.mark_timer = None
        if p.status is Status.TERMINATED or not p.tools_running:
            return
        p.tool_marked = True
        self._ledger.update(p)
        self.kick()

    def _end_tool(self, p: Program, now: float, duration_s: float | None, *, every: bool) -> None:
        """A running tool ended (tool_end), or all did (implied by a new request / the max_tool_s bound):
        learn its duration and judge a pause taken for it."""
        p.tools_running = 0 if every else max(0, p.tools_running - 1)
        if p.tool_key is not None and p.tool_started_at is not None:
            measured = duration_s if duration_s is not None else now - p.tool_started_at
            self._tools.observe(p.program_id, p.tool_key, float(measured))
        if p.tool_paused_at is not None:
            if now - p.tool_paused_at < self.config.policy.tool_pause_s:
                self.stats.tool_pauses_premature += 1
            else:
                self.stats.tool_pauses_right += 1
            p.tool_paused_at = None
        if not p.tools_running:
            p.tool_key = None
            p.tool_started_at = None
            p.tool_marked = None
            if p.mark_timer is not None:
                p.mark_timer.cancel()
                p.mark_timer = None

    # ---- program end -----------------------------------------------------------------------------

    def release(self, program_id: str, *, notify: bool = True) -> ProgramInfo:
        """End a program. ``notify=False``: its environment side asked and ended it already (no echo)."""
        p = self._programs.get(program_id_or_400(program_id))
        if p is None:
            raise ProgramNotFoundError(program_id)
        info = self._terminate(p, "released", notify=notify)
        self.kick()
        return info

    def _terminate(self, p: Program, reason: str, *, notify: bool = True) -> ProgramInfo:
        now = self._clock()
        p.previous_backend = p.backend or p.previous_backend
        p.status = Status.TERMINATED
        p.backend = None
        p.terminated_reason = reason
        p.wake.set()  # held requests see TERMINATED and fail with a clear error
        del self._programs[p.program_id]
        self._ledger.remove(p)
        if p.mark_timer is not None:
            p.mark_timer.cancel()
            p.mark_timer = None
        self._tools.forget(p.program_id)
        self.stats.terminated[reason] += 1
        info = p.info(now)
        if self.config.terminated_history:
            self._terminated[p.program_id] = info
            while len(self._terminated) > self.config.terminated_history:
                self._terminated.popitem(last=False)
        if not p.ephemeral and notify:
            self._notifier.notify(p.program_id)
        log.info("program %s terminated (%s) after %d steps", p.program_id, reason, p.steps)
        return info

    def _expire_inactive(self) -> None:
        now = self._clock()
        for p in self._programs.values():  # a lost tool_end cannot keep a program acting forever
            if p.tools_running and p.tool_started_at is not None and now - p.tool_started_at > self.config.max_tool_s:
                log.warning(
                    "program %s: no tool_end for %.0fs; treating its tools as ended",
                    p.program_id,
                    now - p.tool_started_at,
                )
                self._end_tool(p, now, None, every=True)
                self._ledger.update(p)
        limit = self.config.inactivity_timeout_s
        idle = [
            p
            for p in self._programs.values()
            if not p.running and not p.held and not p.tools_running and now - p.last_activity > limit
        ]
        for p in idle:
            self._terminate(p, f"inactive for more than {limit:.0f}s")

    # ---- views -----------------------------------------------------------------------------------

    def programs(self, *, include_terminated: bool = False) -> list[ProgramInfo]:
        now = self._clock()
        live = [p.info(now) for p in self._programs.values()]
        return [*live, *self._terminated.values()] if include_terminated else live

    def program(self, program_id: str) -> ProgramInfo:
        p = self._programs.get(program_id_or_400(program_id))
        if p is not None:
            return p.info(self._clock())
        if program_id in self._terminated:
            return self._terminated[program_id]
        raise ProgramNotFoundError(program_id)

    def snapshot(self) -> SchedulerCounts:
        now = self._clock()
        views = self.views(now)
        backend_views = self.backends.views()
        self._ledger.begin_round(backend_views)
        loads = {b.url: self._ledger.weighted(b.url) for b in backend_views}
        backends = self.backends.backends.values()
        return SchedulerCounts(
            active=sum(v.status is Status.ACTIVE for v in views),
            paused=sum(v.status is Status.PAUSED for v in views),
            waiting=sum(v.ready for v in views),
            backend_capacity={b.url: b.capacity for b in backends},
            backend_used={b.url: loads.get(b.url, 0.0) for b in backends},
            backend_healthy={b.url: b.healthy for b in backends},
            backend_host_tier={v.url: v.host_tier_tokens for v in backend_views},
            backend_host_tier_used={
                url: sum(p.tokens for p in self._programs.values() if p.in_host_tier and p.previous_backend == url)
                for url in self.backends.backends
            },
        )

    @property
    def notifier_failures(self) -> int:
        return self._notifier.failures
