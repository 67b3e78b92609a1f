"""Per-program state: which sandboxes a program holds, its commands, and when it ends.

One ``ProgramRegistry`` per server (owned by it, never global). A program exists from its first call
until ``program_end``, the end of its stdio session, an idle timeout or server shutdown; then its
commands are killed and its leases dropped, and the env manager reclaims what no one else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from thunder_env import EnvManager, Lease, SandboxNotFoundError
from thunder_env.periodic import Periodic
from thunder_env.processes import ExecProcess

from .config import ServerConfig, check_program_id
from .errors import (
    AccessDeniedError,
    PortLimitError,
    ProcessLimitError,
    ProgramBindingError,
    ProgramLimitError,
    ProgramRetiredError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class ProgramState:
    program_id: str
    last_active: float
    leases: dict[str, Lease] = field(default_factory=dict)  # sandbox_id -> this program's lease
    processes: dict[str, ExecProcess] = field(default_factory=dict)
    active_calls: int = 0
    pending_creates: int = 0
    # Commands (and file operations) in flight, whether a call waits for them or not: each holds a
    # connection, so every one counts against the program's cap, not only the registered ones.
    execs_in_flight: int = 0
    pending_ports: int = 0  # port_expose calls opening a forwarder
    ended: bool = False
    # Who has made calls as this program (token identities; None: an unauthenticated transport).
    principals: set[str | None] = field(default_factory=set)

    def live_leases(self) -> list[Lease]:
        for sandbox_id in [sid for sid, lease in self.leases.items() if lease.released]:
            del self.leases[sandbox_id]
        return list(self.leases.values())

    def running_processes(self, sandbox_id: str | None = None) -> list[ExecProcess]:
        return [p for p in self.processes.values() if p.running and (sandbox_id is None or p.sandbox_id == sandbox_id)]

    def claim_exec(self, limit: int) -> Callable[[], None]:
        """Count one command in flight against ``limit`` (``ProcessLimitError`` past it); call the returned
        function, once, when it ends."""
        if self.execs_in_flight >= limit:
            raise ProcessLimitError(self.program_id, self.execs_in_flight, limit)
        self.execs_in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.execs_in_flight -= 1

        return release

    @contextlib.contextmanager
    def exec_slot(self, limit: int) -> Iterator[None]:
        """One command in flight for the duration of a block (see ``claim_exec``)."""
        release = self.claim_exec(limit)
        try:
            yield
        finally:
            release()

    @contextlib.asynccontextmanager
    async def port_slot(self, exposed: int, limit: int) -> AsyncIterator[None]:
        """Room for one more exposed port while it is being opened (``exposed``: those open now)."""
        if exposed + self.pending_ports >= limit:
            raise PortLimitError(self.program_id, exposed + self.pending_ports, limit)
        self.pending_ports += 1
        try:
            yield
        finally:
            self.pending_ports -= 1


@dataclass(frozen=True, slots=True)
class EndReport:
    program_id: str
    sandboxes_released: int
    sandboxes_destroyed: int
    processes_killed: int


@dataclass(frozen=True, slots=True)
class EndNotice:
    """What end listeners hear once a program ended. ``external``: a peer (the scheduler) asked for the end,
    so it need not be told."""

    program_id: str
    reason: str
    external: bool = False


EndListener = Callable[[EndNotice], None]
IdleGuard = Callable[[str], bool]  # program id -> True: something else decides when it is idle


class ProgramRegistry:
    """``idle_guard`` (optional): programs it answers True for count as active at each idle check (e.g. the
    combined server's scheduler, which sees their LLM requests too, ends them by its own inactivity timer);
    the idle timeout counts for them from the last check they were guarded. Ends reach others through
    ``add_end_listener``: compose, do not subclass."""

    def __init__(
        self,
        manager: EnvManager,
        config: ServerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_guard: IdleGuard | None = None,
    ) -> None:
        self.manager = manager
        self.config = config
        self._clock = clock
        self._idle_guard = idle_guard
        self._programs: dict[str, ProgramState] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._reaper = Periodic(self.reap_idle, config.reaper_interval_s, "program idle reaper")
        self._ending: dict[str, asyncio.Future[EndReport]] = {}
        self._protected: set[asyncio.Future[Any]] = set()
        self._closed = False
        # Programs the operator named (program tokens, the default program): any caller may name them.
        self._configured: set[str] = {config.default_program_id} if config.default_program_id else set()
        self._end_listeners: list[EndListener] = []

    # ------------------------------------------------------------------ programs

    def state(self, program_id: str) -> ProgramState:
        """The live state of a program, created on first use."""
        if self._closed:
            raise ProgramBindingError("the server is shutting down; no new calls are accepted")
        reason = self._ended.get(program_id)
        if reason is not None:
            raise ProgramRetiredError(program_id, reason)
        state = self._programs.get(program_id)
        if state is None:
            try:
                check_program_id(program_id)
            except ValueError as exc:
                raise ProgramBindingError(str(exc)) from exc
            if len(self._programs) >= self.config.max_programs:
                raise ProgramLimitError(len(self._programs), self.config.max_programs)
            state = ProgramState(program_id, last_active=self._clock())
            self._programs[program_id] = state
            self._ensure_reaper()
        return state

    def configure(self, program_ids: Iterable[str]) -> None:
        """Declare programs of the configuration (e.g. those of program tokens): callers may name them."""
        self._configured.update(check_program_id(program_id) for program_id in program_ids)

    def may_name(self, program_id: str, principal: str | None) -> bool:
        """Whether a caller may name ``program_id`` as another program (sandbox_share's target): a configured
        program, or a live one that already made a call with the caller's own token."""
        if program_id in self._configured:
            return True
        state = self._programs.get(program_id)
        return state is not None and principal in state.principals

    @contextlib.asynccontextmanager
    async def call(self, program_id: str, principal: str | None = None) -> AsyncIterator[ProgramState]:
        """Attribute one tool call to a program: it is not idle while the call runs."""
        state = self.state(program_id)
        state.principals.add(principal)
        state.active_calls += 1
        state.last_active = self._clock()
        try:
            yield state
        finally:
            state.active_calls -= 1
            state.last_active = self._clock()

    def programs(self) -> list[str]:
        return sorted(self._programs)

    def get(self, program_id: str) -> ProgramState | None:
        return self._programs.get(program_id)

    def lease(self, state: ProgramState, sandbox_id: str) -> Lease:
        """The program's lease on a sandbox, or an error that says why there is none."""
        lease = state.leases.get(sandbox_id)
        if lease is not None and not lease.released:
            return lease
        if lease is not None:
            del state.leases[sandbox_id]
            raise SandboxNotFoundError(
                sandbox_id, f"it is no longer available ({lease.release_reason}); create a new sandbox"
            )
        if any(info.sandbox_id == sandbox_id for info in self.manager.sandboxes()):
            raise AccessDeniedError(sandbox_id, state.program_id)
        raise SandboxNotFoundError(sandbox_id, "call sandbox_list to see the sandboxes this program holds")

    def add_end_listener(self, listener: EndListener) -> None:
        """Call ``listener`` (synchronous, must not block) once each program has ended, however it ended."""
        self._end_listeners.append(listener)

    def has_ended(self, program_id: str) -> bool:
        """Whether the program ended and is still remembered (see ``ended_programs_remembered``)."""
        return program_id in self._ended

    def is_ending(self, program_id: str) -> bool:
        return program_id in self._ending

    async def end(self, program_id: str, reason: str, *, external: bool = False) -> EndReport:
        """Kill the program's commands and drop its leases. Later calls with its id get a clear error.

        Runs to completion even if the caller is cancelled (a half-done end would leak containers);
        concurrent ends of one program share the work. ``external``: a peer asked for it (see EndNotice).
        """
        task = self._ending.get(program_id)
        if task is None:
            task = asyncio.ensure_future(self._end(program_id, reason, external))
            self._ending[program_id] = task
            task.add_done_callback(lambda _t: self._ending.pop(program_id, None))
        return await asyncio.shield(task)

    async def protect(self, work: Awaitable[T]) -> T:
        """Run reclaiming work (a release...) to completion even if the calling tool call is cancelled;
        ``close`` waits for it."""
        task = asyncio.ensure_future(work)
        self._protected.add(task)
        task.add_done_callback(self._protected.discard)
        return await asyncio.shield(task)

    async def _end(self, program_id: str, reason: str, external: bool) -> EndReport:
        try:
            state = self._programs.pop(program_id, None)
            self._retire(program_id, reason)
            killed = 0
            released = 0
            if state is not None:
                state.ended = True
                running = state.running_processes()
                killed = len(running)
                await asyncio.gather(*(p.kill() for p in running), return_exceptions=True)
                released = len(state.live_leases())
                state.leases.clear()
                state.processes.clear()
            destroyed = await self.manager.end_program(program_id)
        finally:  # also when reclaiming failed: the program is retired either way
            self._tell_end(EndNotice(program_id, reason, external))
        log.info("program %s ended (%s): %d sandboxes released, %d destroyed", program_id, reason, released, destroyed)
        return EndReport(program_id, released, destroyed, killed)

    def _tell_end(self, notice: EndNotice) -> None:
        for listener in list(self._end_listeners):
            try:
                listener(notice)
            except Exception:  # a listener must not undo or hide the end
                log.exception("end listener %r failed for program %s", listener, notice.program_id)

    async def reap_idle(self) -> list[str]:
        """End programs that made no call for longer than the idle timeout. Returns their ids."""
        ttl = self.config.program_idle_timeout_s
        if ttl is None:
            return []
        now = self._clock()
        if self._idle_guard is not None:
            for program_id, state in self._programs.items():
                if self._guarded(program_id):
                    state.last_active = now
        idle = [
            pid for pid, state in self._programs.items() if state.active_calls == 0 and now - state.last_active > ttl
        ]
        for program_id in idle:
            await self.end(program_id, f"no tool call for more than {ttl:g} s")
        return idle

    async def close(self) -> None:
        """End every program (server shutdown). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._reaper.stop()
        await asyncio.gather(
            *(self.end(pid, "server shut down") for pid in list(self._programs)), return_exceptions=True
        )
        # Ends and releases started by cancelled calls or by the reaper finish before the manager closes.
        await asyncio.gather(*self._ending.values(), *self._protected, return_exceptions=True)

    # ----------------------------------------------------------------- internals

    def _retire(self, program_id: str, reason: str) -> None:
        limit = self.config.ended_programs_remembered
        if limit == 0:
            return
        self._ended[program_id] = reason
        self._ended.move_to_end(program_id)
        while len(self._ended) > limit:
            self._ended.popitem(last=False)

    def _guarded(self, program_id: str) -> bool:
        assert self._idle_guard is not None
        try:
            return self._idle_guard(program_id)
        except Exception:  # a broken guard must not stop the reaper: the program's own timeout applies
            log.exception("idle guard %r failed for program %s", self._idle_guard, program_id)
            return False

    def _ensure_reaper(self) -> None:
        if self.config.program_idle_timeout_s is not None:
            self._reaper.start()
