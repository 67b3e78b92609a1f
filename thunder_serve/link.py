"""One program, two sides: its LLM share (the scheduler) and its environments (MCP registry + env manager).

`ProgramLink` couples them in one process:
- termination on either side ends the other, exactly once: the scheduler's release or inactivity ends the
  program's MCP state and sandboxes; `program_end`, a closed session or the MCP idle timeout releases it in
  the scheduler;
- a paused program at the head of the waiting queue (checked periodically) or about to be restored gets its
  environment prepared (the spec it last acquired) while it waits and while its held LLM request runs, so
  its next `sandbox_create` finds a started sandbox.

It composes, never subclasses: it learns the spec each program last acquired from the env manager's lifecycle
events (`EnvMemory`), hears ends through the registry's end listener and the scheduler's `on_program_end`, keeps
the registry's idle reaper off programs the scheduler tracks (`live_in_scheduler` as the registry's
`idle_guard`), and asks the scheduler for the restore order (`Scheduler.restore_queue`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

from mcp_server import ProgramRegistry
from thunder_env import EnvManager, ThunderError
from thunder_sched.errors import ProgramNotFoundError
from thunder_sched.policy import Status
from thunder_sched.scheduler import Scheduler

from .envs import SPEC_MEMORY, EnvMemory

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LinkStats:
    prepares: int = 0  # environments prepared for a program at the head of the queue or about to be restored
    prepares_skipped: int = 0  # nothing to prepare (no acquire yet, or a sandbox of that spec still held)
    ended_by_scheduler: int = 0  # programs the scheduler ended first (release, inactivity)
    ended_by_env: int = 0  # programs the MCP side ended first (program_end, closed session, idle, shutdown)


class ProgramLink:
    def __init__(
        self,
        scheduler: Scheduler,
        manager: EnvManager,
        *,
        prepare_on_restore: bool = True,
        prepare_ahead: int = 1,
    ) -> None:
        self.scheduler = scheduler
        self.manager = manager
        self.envs = EnvMemory(manager)  # listens to the manager's lifecycle events until close()
        self.prepare_on_restore = prepare_on_restore
        self.prepare_ahead = prepare_ahead  # programs at the head of the waiting queue prepared while they wait
        self.stats = LinkStats()
        self._registry: ProgramRegistry | None = None
        self._env_ended: OrderedDict[str, None] = OrderedDict()  # programs whose environment side has ended
        self._releasing: set[str] = set()  # released here because the env side ended: skip the echo
        self._prepared: OrderedDict[str, int] = OrderedDict()  # program -> acquire number it was prepared after
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def attach(self, registry: ProgramRegistry) -> None:
        self._registry = registry
        registry.add_end_listener(lambda notice: self.env_ended(notice.program_id))
        self.scheduler.add_restore_listener(self.on_restore)

    @property
    def registry(self) -> ProgramRegistry:
        if self._registry is None:
            raise RuntimeError("ProgramLink.attach(registry) was not called")
        return self._registry

    # ---- scheduler side ended ---------------------------------------------------------------------

    async def on_scheduler_end(self, program_id: str) -> None:
        """The scheduler's `on_program_end`: end the program's environments unless they ended first."""
        if program_id in self._releasing:
            self._releasing.discard(program_id)  # our own release, after the env side ended
            return
        if program_id in self._env_ended or self._closed:
            return
        self.stats.ended_by_scheduler += 1
        await self.registry.end(program_id, f"the scheduler ended it: {self._scheduler_reason(program_id)}")

    def _scheduler_reason(self, program_id: str) -> str:
        try:
            return self.scheduler.program(program_id).terminated_reason or "terminated"
        except ProgramNotFoundError:
            return "terminated"

    # ---- environment side ended -------------------------------------------------------------------

    def env_ended(self, program_id: str) -> None:
        """Called once the MCP registry ended a program: release it in the scheduler if it is live there."""
        if program_id in self._env_ended:
            return
        self._env_ended[program_id] = None
        while len(self._env_ended) > SPEC_MEMORY:
            self._env_ended.popitem(last=False)
        if self.live_in_scheduler(program_id):
            self.stats.ended_by_env += 1
            self._releasing.add(program_id)
            self.scheduler.release(program_id)

    def live_in_scheduler(self, program_id: str) -> bool:
        try:
            return self.scheduler.program(program_id).status is not Status.TERMINATED
        except ProgramNotFoundError:
            return False

    def env_has_ended(self, program_id: str) -> bool:
        return program_id in self._env_ended

    # ---- waiting queue / restore -> prepare -------------------------------------------------------

    def on_restore(self, program_id: str) -> None:
        """Scheduler hook, synchronous: the program is about to be restored; prepare its environment now if
        that was not done while it waited at the head of the queue (never blocks)."""
        self._maybe_prepare(program_id)

    def prepare_queue_head(self) -> list[str]:
        """Prepare the environments of the next programs the scheduler will restore; returns their ids."""
        head = self.scheduler.restore_queue(self.prepare_ahead)
        for program_id in head:
            self._maybe_prepare(program_id)
        return head

    async def watch_queue(self, period_s: float) -> None:
        """Run `prepare_queue_head` every `period_s` until closed (started by the combined app's lifespan)."""
        while not self._closed:
            try:
                self.prepare_queue_head()
            except Exception:  # a failed round must not stop the watcher
                log.exception("preparing the head of the waiting queue failed")
            await asyncio.sleep(period_s)

    def _ending(self, program_id: str) -> bool:
        """Its environment side has ended or is ending (the registry's end is under way)."""
        if program_id in self._env_ended:
            return True
        return self._registry is not None and (
            self._registry.is_ending(program_id) or self._registry.has_ended(program_id)
        )

    def _maybe_prepare(self, program_id: str) -> None:
        if not self.prepare_on_restore or self._closed or self._ending(program_id):
            return
        last = self.envs.last_acquire(program_id)
        if last is None:
            self.stats.prepares_skipped += 1  # it never acquired an environment: nothing to prepare
            return
        spec, number = last
        if self._prepared.get(program_id) == number:
            return  # already prepared since its last acquire
        if self.envs.holds_spec(program_id, spec):
            self.stats.prepares_skipped += 1  # it still holds such a sandbox
            return
        self._prepared[program_id] = number
        while len(self._prepared) > SPEC_MEMORY:
            self._prepared.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._prepare(program_id, number), name=f"prepare:{program_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prepare(self, program_id: str, number: int) -> None:
        # Checked again: the program may have ended or acquired since. No await until prepare() hands the
        # work to the manager, so an end cannot slip in between (its end_program would reclaim it anyway).
        last = self.envs.last_acquire(program_id)
        if last is None or last[1] != number or self._ending(program_id) or self._closed:
            return
        try:
            await self.manager.provisioner.prepare(program_id, last[0])
            self.stats.prepares += 1
        except ThunderError as exc:
            log.warning("could not prepare the environment of program %s ahead of its restore: %s", program_id, exc)

    async def close(self) -> None:
        """Stop reacting; preparations under way finish (the manager reclaims them when it closes)."""
        self._closed = True
        self.envs.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

