"""How sandboxes come to be, and what they leave on disk: templates, warm pools, preparation ahead of
use, snapshots and forks, disk accounting and the disk budget.

A mixin of EnvManager: manager.py keeps leases and operations and calls the four hooks at the bottom
(``_provision``, ``_provisioning_sandbox_gone``, ``_provisioning_end_program``, ``_close_provisioning``).
Sandboxes in a pool, being prepared or building a template are not the manager's until handed over;
they carry the manager's instance labels all along, so reconcile removes them after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .backend import BackendSandbox, Capability, SandboxBackend
from .capabilities import BackendFeatures
from .config import ManagerConfig
from .diskguard import DiskLimitWatch, DiskOverrun
from .diskusage import DiskMeter, SnapshotOwnership, account
from .errors import InvalidSpecError, ManagerClosedError, ThunderError
from .hostcheck import check_disk_reserve, check_host_reserves
from .leases import Lease, LeaseTable
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


class ProvisioningMixin:
    if TYPE_CHECKING:
        backend: SandboxBackend
        features: BackendFeatures
        config: ManagerConfig
        instance_id: str
        _clock: Callable[[], float]
        _leases: LeaseTable
        _sandboxes: dict[str, Any]
        _storage_path: str | None
        _closed: bool
        _unremoved: set[str]

        def labels(self, program_id: str, sandbox_id: str) -> dict[str, str]: ...
        def _checked(self, lease: Lease) -> Any: ...
        def _starting_sandbox(self) -> contextlib.AbstractContextManager[None]: ...
        async def _adopt(self, program_id: str, spec: SandboxSpec, handle: BackendSandbox, origin: str) -> Lease: ...
        async def _destroy(self, sandbox: Any) -> None: ...
        async def _remove_container(self, sandbox_id: str) -> None: ...
        def _tool_call(self, lease: Lease, sandbox: Any, tool: str) -> contextlib.AbstractAsyncContextManager[Any]: ...

    def _init_provisioning(self) -> None:
        config = self.config
        self._snapshots = SnapshotStore(self.features.snapshots, self.labels, self._clock)
        # Every sandbox id this manager created a container for and still answers for (adopted, warm,
        # prepared, half-started): added before the engine call, dropped once its removal was attempted.
        # The health check removes this instance's containers that are in no such hand (see check_health).
        self._in_hand: set[str] = set()
        self._templates = TemplateBuilder(
            self.backend,
            self._snapshots,
            self.labels,
            step_timeout_s=config.template_step_timeout_s,
            pause=config.snapshot_pause,
            max_concurrent=config.template_build_concurrency,
            before_build=lambda: self._check_snapshot_reserve("a template build"),
            on_built=lambda snapshot: self._disk_grew(),
        )
        self._pools = PoolSet(
            self.backend,
            lambda spec: self._start_sandbox(spec, POOL_PROGRAM),
            self._discard_sandbox,
            refill_concurrency=config.pool_refill_concurrency,
            demand_window_s=config.pool_demand_window_s,
            default_min=config.pool_min_size,
            default_max=config.pool_max_size,
            clock=self._clock,
        )
        self._preparations = Preparations(self._obtain_prepared, self._discard_sandbox, config.prepare_ttl_s)
        self._disk = DiskMeter(self.features.disk, config.disk_usage_cache_s, self._clock)
        self._gc_lock = asyncio.Lock()
        self._gc_tasks: set[asyncio.Task[None]] = set()
        self._disk_limits = DiskLimitWatch(
            lambda: self.disk_usage(max_age_s=0),
            self._sandbox_disk_limits,
            self._stop_over_disk,
            config.disk_check_interval_s,
        )

    # ------------------------------------------------------------- preparation and pools

    async def prepare(self, program_id: str, spec: SandboxSpec) -> None:
        """Make sure an environment for ``program_id`` will be ready; returns at once.

        The program's next ``acquire(program_id, spec)`` takes it (waiting if it is still starting).
        Unclaimed, it is destroyed after ``prepare_ttl_s`` or when the program ends.
        """
        _check_program_id(program_id)
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

    # ---------------------------------------------------------------- snapshots and forks

    async def snapshot(self, lease: Lease) -> SnapshotInfo:
        """Capture the sandbox's filesystem as a new layer on its image's layers, held by the lease's program
        until the program ends or calls ``release_snapshot``. Refused while over the disk budget."""
        sandbox = self._checked(lease)
        self._check_snapshot_reserve("a snapshot")
        await self._collect(refuse=True)
        parents = self._snapshots.held_by(SANDBOX_HOLDER + sandbox.sandbox_id)
        async with self._tool_call(lease, sandbox, "snapshot"):
            snapshot = await self._snapshots.commit(
                sandbox.sandbox_id,
                kind="snapshot",
                program_id=lease.program_id,
                source_spec=sandbox.spec,
                holder=PROGRAM_HOLDER + lease.program_id,
                parent_snapshot_id=parents[0].snapshot_id if parents else None,
                pause=self.config.snapshot_pause,
            )
        self._disk_grew()
        return snapshot.info()

    async def fork(self, program_id: str, snapshot_id: str, n: int = 1) -> list[Lease]:
        """Start ``n`` sandboxes from a snapshot, each on its own copy-on-write layer; all or none."""
        _check_program_id(program_id)
        if not 1 <= n <= MAX_FORKS:
            raise InvalidSpecError(f"n must be in 1..{MAX_FORKS}, got {n}")
        snapshot = self._snapshots.get(snapshot_id)
        check_host_reserves(self._storage_path, self.config.min_free_disk_bytes, self.config.min_free_memory_bytes)
        guard = "fork:" + secrets.token_hex(4)  # keeps the snapshot while its forks start
        with self._starting_sandbox():
            self._snapshots.hold(snapshot_id, guard)
            try:
                handles = await self._start_forks(snapshot, program_id, n)
                return await self._adopt_all(program_id, snapshot.launch_spec, handles)
            finally:
                await asyncio.shield(self._snapshots.release(snapshot_id, guard))

    def snapshots(self) -> list[SnapshotInfo]:
        return [snapshot.info() for snapshot in self._snapshots.snapshots()]

    def hold_snapshot(self, program_id: str, snapshot_id: str) -> SnapshotInfo:
        """Keep a snapshot for ``program_id`` until it releases it or ends."""
        _check_program_id(program_id)
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
        sandbox_programs = {
            sid: [lease.program_id for lease in self._leases.of_sandbox(sid)] for sid in self._sandboxes
        }
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
            instance=self.instance_id,
            sandbox_programs=sandbox_programs,
            snapshots=owned,
            measured_at=time.time(),
        )

    # ------------------------------------------------------------ hooks for EnvManager

    async def _provision(self, program_id: str, spec: SandboxSpec) -> tuple[BackendSandbox, str]:
        """A started sandbox for an acquire: prepared for the program, else warm, else cold."""
        handle = await self._preparations.claim(program_id, spec)
        if handle is not None:
            return handle, "prepared"
        handle = await self._pools.take(spec)
        if handle is not None:
            return handle, "warm"
        return await self._start_sandbox(spec, program_id), "cold"

    async def _provisioning_sandbox_gone(self, sandbox_id: str) -> None:
        await self._snapshots.drop_holder(SANDBOX_HOLDER + sandbox_id)

    async def _provisioning_end_program(self, program_id: str) -> None:
        await self._preparations.end_program(program_id)
        await self._snapshots.drop_holder(PROGRAM_HOLDER + program_id)

    async def _close_provisioning(self) -> None:
        await self._preparations.close()
        await self._pools.close()
        await self._templates.close()
        await self._disk_limits.close()
        for task in self._gc_tasks:
            task.cancel()
        await asyncio.gather(*self._gc_tasks, return_exceptions=True)
        await self._disk.close()
        await self._snapshots.close()

    # ------------------------------------------------------------------------ internals

    async def check_disk_limits(self) -> list[str]:
        """Stop the sandboxes whose writable layer passed their disk limit (also done every
        ``disk_check_interval_s`` where the storage driver does not enforce it); returns their ids."""
        return [overrun.sandbox_id for overrun in await self._disk_limits.check()]

    def _disk_limit(self, spec: SandboxSpec) -> int | None:
        configured = self.config.sandbox_disk_limit_bytes
        if spec.disk_bytes is None or configured is None:
            return configured if spec.disk_bytes is None else spec.disk_bytes
        return min(spec.disk_bytes, configured)

    def _with_disk_limit(self, spec: SandboxSpec) -> SandboxSpec:
        limit = self._disk_limit(spec)
        return spec if limit == spec.disk_bytes else spec.model_copy(update={"disk_bytes": limit})

    def _sandbox_disk_limits(self) -> dict[str, int]:
        """Adopted sandboxes only: warm and prepared ones run no program's commands yet."""
        limits: dict[str, int] = {}
        for sandbox_id, sandbox in self._sandboxes.items():
            limit = self._disk_limit(sandbox.spec)
            if limit is not None and sandbox.state != "destroying":
                limits[sandbox_id] = limit
        return limits

    async def _stop_over_disk(self, overrun: DiskOverrun) -> None:
        sandbox = self._sandboxes.get(overrun.sandbox_id)
        if sandbox is None or sandbox.state == "destroying":
            return
        # The reason reaches the program: every later call on its lease raises LeaseReleasedError with it.
        for lease in self._leases.of_sandbox(overrun.sandbox_id):
            self._leases.remove(lease, overrun.reason)
        await self._destroy(sandbox)

    def _check_snapshot_reserve(self, action: str) -> None:
        reserve = self.config.snapshot_reserve_bytes
        check_disk_reserve(self._storage_path, self.config.min_free_disk_bytes if reserve is None else reserve, action)

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
        check_host_reserves(self._storage_path, self.config.min_free_disk_bytes, self.config.min_free_memory_bytes)
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
            self.backend.create(sandbox_id, launch, self.labels(label_program, sandbox_id))
        )
        try:
            handle = await asyncio.shield(creating)
        except BaseException:
            await asyncio.shield(self._discard_after(creating, sandbox_id))
            raise
        if launch.disk_bytes is not None and self.features.disk.enforces_disk_limit is not True:
            if not self._closed:
                self._disk_limits.start()  # the driver cannot limit it: measure it
        return handle

    async def _discard_after(self, creating: asyncio.Future[BackendSandbox], sandbox_id: str) -> None:
        await asyncio.gather(creating, return_exceptions=True)
        await self._discard_sandbox(sandbox_id)

    async def _discard_sandbox(self, sandbox_id: str) -> None:
        """Destroy a sandbox the manager never adopted (warm, prepared, half-started). A failed removal
        is remembered and retried (health check, close()), and never hides the caller's own error."""
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
        await asyncio.gather(*(self._discard_sandbox(h.sandbox_id) for h in started), return_exceptions=True)

    async def _adopt_all(self, program_id: str, spec: SandboxSpec, handles: list[BackendSandbox]) -> list[Lease]:
        leases: list[Lease] = []
        try:
            for handle in handles:
                leases.append(await self._adopt(program_id, spec, handle, "fork"))
        except BaseException:
            adopted = {lease.sandbox_id for lease in leases}
            rest = [h for h in handles if h.sandbox_id not in adopted and h.sandbox_id not in self._sandboxes]
            cleanup = [self._destroy(self._sandboxes[sid]) for sid in adopted if sid in self._sandboxes]
            cleanup += [self._discard_sandbox(h.sandbox_id) for h in rest]
            await asyncio.shield(asyncio.gather(*cleanup, return_exceptions=True))
            raise
        return leases

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


def _check_program_id(program_id: str) -> None:
    from .manager import _check_program_id as check  # manager.py imports this module: import late

    check(program_id)


__all__ = ["POOL_PROGRAM", "ProvisioningMixin"]
