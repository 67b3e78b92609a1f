"""How sandboxes come to be, and what they leave on disk: templates, warm pools, preparation ahead of
use, snapshots and forks, disk accounting and the disk budget.

``Provisioner`` is owned by the ``EnvManager`` (``manager.provisioner``) and gets from it only what it
needs, as constructor arguments: the backend, the configuration, the labels, the clock, the container
removal (with the engine timeout), the storage path and which programs hold each adopted sandbox. The
manager keeps leases and operations and calls ``provision``, ``sandbox_gone``, ``end_program`` and
``close``. Sandboxes in a pool, being prepared or building a template are the provisioner's until handed
over; they carry the manager's instance labels all along, so reconcile removes them after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from thunder_common.program_ids import check_program_id

from .backend import BackendSandbox, Capability, SandboxBackend
from .capabilities import BackendFeatures
from .config import ManagerConfig
from .diskusage import DiskMeter, SnapshotOwnership, account
from .errors import InvalidSpecError, ManagerClosedError, ThunderError
from .hostcheck import check_disk_reserve, check_host_reserves
from .pools import PoolSet
from .prepare import Preparations
from .results import DiskReport, PoolInfo, PrepareStats, SnapshotInfo
from .snapshots import DiskBudgetExceededError, Snapshot, SnapshotStore, plan_gc
from .spec import SandboxSpec
from .templates import TemplateBuilder

log = logging.getLogger(__name__)

POOL_PROGRAM = "pool"  # thunder.program label of warm sandboxes: their owner is known only on handout
SANDBOX_HOLDER = "sandbox:"
PROGRAM_HOLDER = "program:"
MAX_FORKS = 1000

Labeler = Callable[[str, str], dict[str, str]]  # (program id, sandbox id) -> the container's labels


class Provisioner:
    """Starts sandboxes for the manager (prepared, warm or cold, from a template or a snapshot) and answers
    for them until it hands them over; keeps snapshots and the disk budget."""

    def __init__(
        self,
        backend: SandboxBackend,
        features: BackendFeatures,
        config: ManagerConfig,
        *,
        instance_id: str,
        labels: Labeler,
        remove_container: Callable[[str], Awaitable[None]],
        storage_path: Callable[[], str | None],
        sandbox_programs: Callable[[], Mapping[str, Sequence[str]]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.features = features  # the backend's declared capabilities (checked once by the manager)
        self.config = config
        self._instance_id = instance_id
        self._labels = labels
        self._remove_container = remove_container  # within the engine timeout (EngineStuckError past it)
        self._storage_path = storage_path  # known once the manager started
        self._sandbox_programs = sandbox_programs  # adopted sandbox id -> programs leasing it (disk accounting)
        self._closed = False
        self._snapshots = SnapshotStore(features.snapshots, labels, clock)
        # Every sandbox id this provisioner created a container for and the manager still answers for
        # (adopted, warm, prepared, half-started): added before the engine call, dropped once its removal
        # was attempted. The manager's health check removes this instance's containers in no such hand.
        self._in_hand: set[str] = set()
        # Sandboxes never handed over (half-started, warm, prepared) whose removal failed: retried by
        # ``retry_removals`` (the health check, close()), never forgotten.
        self._unremoved: set[str] = set()
        self._templates = TemplateBuilder(
            backend,
            self._snapshots,
            labels,
            step_timeout_s=config.template_step_timeout_s,
            pause=config.snapshot_pause,
            max_concurrent=config.template_build_concurrency,
            before_build=lambda: self._check_snapshot_reserve("a template build"),
            on_built=lambda snapshot: self._disk_grew(),
        )
        self._pools = PoolSet(
            backend,
            lambda spec: self._start_sandbox(spec, POOL_PROGRAM),
            self.discard,
            refill_concurrency=config.pool_refill_concurrency,
            demand_window_s=config.pool_demand_window_s,
            default_min=config.pool_min_size,
            default_max=config.pool_max_size,
            clock=clock,
        )
        self._preparations = Preparations(self._obtain_prepared, self.discard, config.prepare_ttl_s)
        self._disk = DiskMeter(features.disk, config.disk_usage_cache_s, clock)
        self._gc_lock = asyncio.Lock()
        self._gc_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------- preparation and pools

    async def prepare(self, program_id: str, spec: SandboxSpec) -> None:
        """Make sure an environment for ``program_id`` will be ready; returns at once.

        The program's next ``manager.acquire(program_id, spec)`` takes it (waiting if it is still starting).
        Unclaimed, it is destroyed after ``prepare_ttl_s`` or when the program ends.
        """
        check_program_id(program_id)
        self._check_open()
        self._preparations.prepare(program_id, spec)

    def is_prepared(self, program_id: str, spec: SandboxSpec) -> bool:
        """Whether an environment prepared for the program is ready to be acquired now."""
        return self._preparations.is_ready(program_id, spec)

    def preparation_stats(self) -> PrepareStats:
        return self._preparations.stats

    async def configure_pool(self, spec: SandboxSpec, *, min_size: int, max_size: int) -> PoolInfo:
        """Keep between min_size and max_size warm sandboxes of ``spec`` (as demand asks); max_size 0 removes."""
        self._check_open()
        try:
            return self._pools.configure(spec, min_size, max_size)
        except ValueError as exc:
            raise InvalidSpecError(str(exc)) from exc

    def pools(self) -> list[PoolInfo]:
        return self._pools.infos()

    async def wait_for_pool(
        self, spec: SandboxSpec, *, at_least: int | None = None, timeout_s: float = 60.0
    ) -> PoolInfo:
        """Wait until the pool of ``spec`` holds ``at_least`` (default: its target) warm sandboxes."""
        return await self._pools.wait(spec, at_least, timeout_s)

    def template_builds(self) -> int:
        """How many template builds ran (each template builds once while its snapshot lives)."""
        return self._templates.builds

    # ---------------------------------------------------------------- snapshots

    def snapshots(self) -> list[SnapshotInfo]:
        return [snapshot.info() for snapshot in self._snapshots.snapshots()]

    def hold_snapshot(self, program_id: str, snapshot_id: str) -> SnapshotInfo:
        """Keep a snapshot for ``program_id`` until it releases it or ends."""
        check_program_id(program_id)
        return self._snapshots.hold(snapshot_id, PROGRAM_HOLDER + program_id).info()

    async def release_snapshot(self, program_id: str, snapshot_id: str) -> None:
        """Drop the program's hold; the snapshot is removed when nothing else holds it."""
        self._snapshots.get(snapshot_id)
        await self._snapshots.release(snapshot_id, PROGRAM_HOLDER + program_id)

    async def collect_snapshots(self) -> list[str]:
        """Remove unheld snapshots, then cached ones oldest first while over the disk budget."""
        return await self._collect(refuse=False)

    async def disk_usage(self, max_age_s: float | None = None) -> DiskReport:
        """Unique and shared bytes of every sandbox and snapshot, summed per program (engine figures,
        at most ``disk_usage_cache_s`` old unless ``max_age_s`` says otherwise)."""
        usage = await self._disk.read(max_age_s)
        owned = [
            SnapshotOwnership(
                s.snapshot_id,
                s.image_id,
                frozenset(h.removeprefix(PROGRAM_HOLDER) for h in s.holders if h.startswith(PROGRAM_HOLDER)),
            )
            for s in self._snapshots.snapshots()
        ]
        return account(
            usage,
            namespace=self.config.namespace,
            instance=self._instance_id,
            sandbox_programs={sid: list(programs) for sid, programs in self._sandbox_programs().items()},
            snapshots=owned,
            measured_at=time.time(),
        )

    # ------------------------------------------------------------ what the manager calls

    async def provision(self, program_id: str, spec: SandboxSpec) -> tuple[BackendSandbox, str]:
        """A started sandbox for an acquire: prepared for the program, else warm, else cold; and which."""
        handle = await self._preparations.claim(program_id, spec)
        if handle is not None:
            return handle, "prepared"
        handle = await self._pools.take(spec)
        if handle is not None:
            return handle, "warm"
        return await self._start_sandbox(spec, program_id), "cold"

    async def snapshot_room(self) -> None:
        """Refuse a snapshot while the host's disk reserve or the disk budget is short (collecting first)."""
        self._check_snapshot_reserve("a snapshot")
        await self._collect(refuse=True)

    async def commit_snapshot(self, sandbox_id: str, spec: SandboxSpec, program_id: str) -> SnapshotInfo:
        """Capture an adopted sandbox's filesystem as a snapshot held by ``program_id``."""
        parents = self._snapshots.held_by(SANDBOX_HOLDER + sandbox_id)
        snapshot = await self._snapshots.commit(
            sandbox_id,
            kind="snapshot",
            program_id=program_id,
            source_spec=spec,
            holder=PROGRAM_HOLDER + program_id,
            parent_snapshot_id=parents[0].snapshot_id if parents else None,
            pause=self.config.snapshot_pause,
        )
        self._disk_grew()
        return snapshot.info()

    @contextlib.asynccontextmanager
    async def forks(
        self, program_id: str, snapshot_id: str, n: int
    ) -> AsyncIterator[tuple[SandboxSpec, list[BackendSandbox]]]:
        """Start ``n`` sandboxes from a snapshot, all or none, and yield (their spec, their handles) for the
        manager to adopt; the snapshot is kept until the block ends (each fork holds it too)."""
        check_program_id(program_id)
        if not 1 <= n <= MAX_FORKS:
            raise InvalidSpecError(f"n must be in 1..{MAX_FORKS}, got {n}")
        snapshot = self._snapshots.get(snapshot_id)
        check_host_reserves(self._storage_path(), self.config.min_free_disk_bytes, self.config.min_free_memory_bytes)
        guard = "fork:" + secrets.token_hex(4)
        self._snapshots.hold(snapshot_id, guard)
        try:
            yield snapshot.launch_spec, await self._start_forks(snapshot, program_id, n)
        finally:
            await asyncio.shield(self._snapshots.release(snapshot_id, guard))

    async def sandbox_gone(self, sandbox_id: str) -> None:
        """An adopted sandbox's container is gone: its snapshot holds go (the engine kept their images
        while the container used them)."""
        self._in_hand.discard(sandbox_id)
        await self._snapshots.drop_holder(SANDBOX_HOLDER + sandbox_id)

    async def end_program(self, program_id: str) -> None:
        await self._preparations.end_program(program_id)
        await self._snapshots.drop_holder(PROGRAM_HOLDER + program_id)

    def answers_for(self, sandbox_id: str) -> bool:
        """Whether a container of this instance is one the provisioner started and still answers for
        (adopted, warm, prepared, starting, building a template, or a failed removal to retry)."""
        return sandbox_id in self._in_hand or sandbox_id in self._unremoved or sandbox_id in self._templates.build_ids

    @property
    def unremoved(self) -> frozenset[str]:
        return frozenset(self._unremoved)

    async def retry_removals(self) -> None:
        """Retry what failed to go: sandboxes never handed over, images of failed snapshots (kept while
        they fail; logged)."""
        for sandbox_id in sorted(self._unremoved):
            try:
                await self._remove_container(sandbox_id)  # by sandbox id: its host directory goes too
            except Exception as exc:  # kept: the next health check or close() tries again
                log.warning("sandbox %s could not be removed again: %s", sandbox_id, exc)
                continue
            self._unremoved.discard(sandbox_id)
        await self._snapshots.retry_orphans()

    async def discard(self, sandbox_id: str) -> None:
        """Destroy a sandbox the manager never adopted (warm, prepared, half-started). A failed removal
        is remembered and retried (``retry_removals``), and never hides the caller's own error."""
        try:
            await self._remove_container(sandbox_id)  # within engine_timeout_s: a hung engine is reported
        except BaseException as exc:
            self._unremoved.add(sandbox_id)
            if not isinstance(exc, Exception):
                raise  # a cancel
            log.warning("sandbox %s could not be removed (%s); it is retried", sandbox_id, exc)
        finally:
            # Removed or not, nobody holds it any more: a container left behind is the health check's.
            self._in_hand.discard(sandbox_id)
            await self._snapshots.drop_holder(SANDBOX_HOLDER + sandbox_id)

    def stop_accepting(self) -> None:
        """The manager is closing: refuse new preparations and pool changes from now on."""
        self._closed = True

    async def close(self) -> None:
        self._closed = True
        await self._preparations.close()
        await self._pools.close()
        await self._templates.close()
        for task in self._gc_tasks:
            task.cancel()
        await asyncio.gather(*self._gc_tasks, return_exceptions=True)
        await self._disk.close()
        await self._snapshots.close()

    # ------------------------------------------------------------------------ internals

    def _with_disk_limit(self, spec: SandboxSpec) -> SandboxSpec:
        limit = disk_limit(spec, self.config.sandbox_disk_limit_bytes)
        return spec if limit == spec.disk_bytes else spec.model_copy(update={"disk_bytes": limit})

    def _check_snapshot_reserve(self, action: str) -> None:
        reserve = self.config.snapshot_reserve_bytes
        check_disk_reserve(
            self._storage_path(), self.config.min_free_disk_bytes if reserve is None else reserve, action
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError()

    async def _obtain_prepared(self, program_id: str, spec: SandboxSpec) -> BackendSandbox:
        handle = await self._pools.take(spec)
        return handle if handle is not None else await self._start_sandbox(spec, program_id)

    async def _start_sandbox(self, spec: SandboxSpec, label_program: str) -> BackendSandbox:
        """Start one sandbox of ``spec``, from its template's snapshot when it has setup steps."""
        if spec.setup:  # before any build: a template is a snapshot of its setup steps
            self.features.require(
                Capability.SNAPSHOTS,
                "a spec with setup steps is built once and kept as a snapshot; run the steps in the sandbox instead",
            )
        snapshot = await self._templates.ensure(self._with_disk_limit(spec)) if spec.setup else None
        check_host_reserves(self._storage_path(), self.config.min_free_disk_bytes, self.config.min_free_memory_bytes)
        sandbox_id = "sb-" + secrets.token_hex(6)
        launch = spec
        if snapshot is not None:
            # No await since ensure(): the snapshot cannot have been collected in between.
            self._snapshots.hold(snapshot.snapshot_id, SANDBOX_HOLDER + sandbox_id)
            launch = spec.model_copy(update={"image": snapshot.image_id, "setup": ()})
        return await self._create(sandbox_id, launch, label_program)

    async def _create(self, sandbox_id: str, launch: SandboxSpec, label_program: str) -> BackendSandbox:
        # Shielded: a create request cut off by a cancellation still completes inside the engine, so
        # removing at once could run before the container exists. Let it answer, then remove.
        launch = self._with_disk_limit(launch)
        if launch.disk_bytes is not None:
            self.features.require(  # a limit nobody can measure is refused, not dropped
                Capability.DISK_ACCOUNTING,
                "a sandbox disk limit (disk_bytes) needs it; leave disk_bytes unset on this backend",
            )
        self._in_hand.add(sandbox_id)  # before the engine call: a create in flight is never judged orphaned
        creating = asyncio.ensure_future(
            self.backend.create(sandbox_id, launch, self._labels(label_program, sandbox_id))
        )
        try:
            return await asyncio.shield(creating)
        except BaseException:
            await asyncio.shield(self._discard_after(creating, sandbox_id))
            raise

    async def _discard_after(self, creating: asyncio.Future[BackendSandbox], sandbox_id: str) -> None:
        await asyncio.gather(creating, return_exceptions=True)
        await self.discard(sandbox_id)

    async def _start_forks(self, snapshot: Snapshot, program_id: str, n: int) -> list[BackendSandbox]:
        limit = asyncio.Semaphore(self.config.fork_concurrency)

        async def start_one() -> BackendSandbox:
            async with limit:
                sandbox_id = "sb-" + secrets.token_hex(6)
                self._snapshots.hold(snapshot.snapshot_id, SANDBOX_HOLDER + sandbox_id)
                return await self._create(sandbox_id, snapshot.launch_spec, program_id)

        tasks = [asyncio.create_task(start_one()) for _ in range(n)]
        try:
            await asyncio.wait(tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.shield(self._discard_started(tasks))
            raise
        failures = [task.exception() for task in tasks if task.exception() is not None]
        if failures:
            await asyncio.shield(self._discard_started(tasks))
            raise failures[0]  # type: ignore[misc]
        return [task.result() for task in tasks]

    async def _discard_started(self, tasks: list[asyncio.Task[BackendSandbox]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        started = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
        await asyncio.gather(*(self.discard(h.sandbox_id) for h in started), return_exceptions=True)

    def _disk_grew(self) -> None:
        """A new snapshot: collect in the background (the budget may now be exceeded)."""
        if self.config.disk_budget_bytes is None:
            return
        self._spawn_gc(self._collect_quietly())

    async def _collect_quietly(self) -> None:
        with contextlib.suppress(ThunderError):
            await self._collect(refuse=False)

    async def _collect(self, *, refuse: bool) -> list[str]:
        budget = self.config.disk_budget_bytes
        async with self._gc_lock:
            if budget is None:
                unheld = [s.snapshot_id for s in self._snapshots.snapshots() if not s.holders]
                await self._snapshots.remove_ids(unheld)
                return unheld
            report = await self.disk_usage(max_age_s=0)
            unique = {usage.resource_id: usage.unique_bytes for usage in report.snapshots}
            plan = plan_gc(self._snapshots.candidates(unique), report.managed_bytes, budget)
            await self._snapshots.remove_ids(plan.remove)
        if refuse and plan.over_budget:
            raise DiskBudgetExceededError(plan.used_after, budget)
        return list(plan.remove)

    def _spawn_gc(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._gc_tasks.add(task)
        task.add_done_callback(self._gc_tasks.discard)


def disk_limit(spec: SandboxSpec, configured: int | None) -> int | None:
    """A sandbox's disk limit: its spec's, at most the manager's ``sandbox_disk_limit_bytes``."""
    if spec.disk_bytes is None or configured is None:
        return configured if spec.disk_bytes is None else spec.disk_bytes
    return min(spec.disk_bytes, configured)


__all__ = ["MAX_FORKS", "POOL_PROGRAM", "Provisioner", "disk_limit"]
