"""EnvManager: sandboxes leased by programs, with reference counts and zero-leak reclamation.

Lifecycle lives here (acquire, share, release, end_program, idle TTL, reconcile); operations
(exec, files, ports) are thin wrappers that check the lease, emit tool events and call the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from thunder_common.program_ids import check_program_id as _check_program_id

from . import files
from .backend import BackendSandbox, ExecRequest, ManagedResource, SandboxBackend
from .capabilities import resolve_features
from .config import ManagerConfig
from .diskguard import DiskLimitWatch, DiskOverrun
from .errors import (
    EngineStuckError,
    FileOperationError,
    InvalidSpecError,
    LeaseReleasedError,
    ManagerClosedError,
    PortExposeError,
    SandboxDeadError,
    SandboxesNotDestroyedError,
    SandboxNotFoundError,
)
from .events import (
    EventBus,
    LifecycleEvent,
    ProgramEnded,
    SandboxAcquired,
    SandboxEvent,
    SandboxReleased,
    ToolEvent,
    ToolEventListener,
    command_word,
)
from .leases import Lease, LeaseTable
from .periodic import Periodic
from .ports import PortForwarder
from .provisioning import Provisioner, disk_limit
from .reconcile import OwnerIdentity, ReconcileReport, reconcile_namespace
from .results import ExecResult, FileEntry, OutputChunk, PortBinding, SandboxInfo, SnapshotInfo
from .spec import SandboxSpec

log = logging.getLogger(__name__)

Command = str | Sequence[str]


class _Default:
    """Sentinel: 'use the configured default', as opposed to None meaning 'no timeout'."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
# destroy_failed: its container could not be removed; still tracked, retried with backoff.
SandboxState = Literal["ready", "lingering", "destroying", "destroy_failed"]
# Engine states of a container that will not run commands again by itself.
_STOPPED_STATES = frozenset({"exited", "dead"})
MAX_DESTROY_RETRY_S = 60.0


@dataclass(eq=False)
class _Sandbox:
    sandbox_id: str
    spec: SandboxSpec
    handle: BackendSandbox
    created_at: float
    last_used_at: float
    state: SandboxState = "ready"
    forwarders: dict[int, PortForwarder] = field(default_factory=dict)
    port_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one forwarder per port, never two
    linger_task: asyncio.Task[None] | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set once its destroy has finished
    busy: int = 0  # operations in flight: an idle reaper must not pull the floor from under them
    origin: str = "cold"  # cold | warm | prepared | fork (see provisioning.py)
    destroy_attempts: int = 0  # failed removals so far
    retry_task: asyncio.Task[None] | None = None
    died: str | None = None  # why its container stopped behind the manager's back


class EnvManager:
    """Use as ``async with EnvManager(make_backend()) as envs:``; closing destroys what it holds."""

    def __init__(
        self,
        backend: SandboxBackend,
        config: ManagerConfig | None = None,
        *,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.config = config or ManagerConfig()
        # The backend's optional capabilities, checked once: a call needing a missing one gets a typed error.
        self.features = resolve_features(backend, self.config)
        self.events = events or EventBus()
        self.instance_id = secrets.token_hex(8)
        self.owner = OwnerIdentity.current()
        self._clock = clock
        self._leases = LeaseTable()
        self._sandboxes: dict[str, _Sandbox] = {}
        self._storage_path: str | None = None
        self._reaper = Periodic(self.reap_idle, self.config.reaper_interval_s, "idle reaper")
        self._watcher = Periodic(self.check_health, self.config.health_interval_s or 0.0, "sandbox health check")
        self.orphans_removed = 0  # containers the health check found nobody here holds, and removed
        self.orphan_report = ReconcileReport()  # the last health check's removals and failures
        self._closed = False
        self._starting: set[asyncio.Future[None]] = set()  # acquires and forks in flight: close() waits
        # Pools, preparations, templates, snapshot holds and disk accounting (provisioning.py); the manager
        # keeps leases, operations and reclamation, and hands the provisioner only what it needs.
        self.provisioner = Provisioner(
            backend,
            self.features,
            self.config,
            instance_id=self.instance_id,
            labels=self.labels,
            remove_container=self._remove_container,
            storage_path=lambda: self._storage_path,
            sandbox_programs=self._sandbox_programs,
            clock=clock,
        )
        self._disk_limits = DiskLimitWatch(
            lambda: self.provisioner.disk_usage(max_age_s=0),
            self._sandbox_disk_limits,
            self._stop_over_disk,
            self.config.disk_check_interval_s,
        )

    # ----------------------------------------------------------------- lifecycle of the manager

    async def start(self) -> ReconcileReport | None:
        self._storage_path = await self.features.disk.storage_path()
        report = await self.reconcile() if self.config.reconcile_on_start else None
        if self.config.idle_ttl_s is not None:
            self._reaper.start()
        if self.config.health_interval_s is not None:
            self._watcher.start()
        return report

    async def close(self) -> None:
        """Destroy every sandbox this manager holds and stop background work.

        Raises ``SandboxesNotDestroyedError`` (after everything else is done) if some containers could
        not be removed: they stay tracked, and closing again retries them."""
        if self._closed:
            await self._destroy_remaining()
            return
        self._closed = True
        self.provisioner.stop_accepting()
        # Both loops stop at once; a reap or health check in progress finishes (it may be removing containers).
        await asyncio.gather(self._reaper.stop(), self._watcher.stop())
        closed = [lease for owner in self._leases.programs() for lease in self._leases.of_program(owner)]
        for lease in closed:
            self._leases.remove(lease, "manager closed")
        await asyncio.gather(*(self._destroy(sb) for sb in list(self._sandboxes.values())), return_exceptions=True)
        await self._announce(*self._released(closed))
        await self._disk_limits.close()
        await self.provisioner.close()
        if self._starting:
            # Acquires racing with close: each destroys what it started (see _adopt); wait for them.
            await asyncio.wait(set(self._starting))
        await self._destroy_remaining()

    async def _destroy_remaining(self) -> None:
        """One more removal of what failed to go (a closed manager retries only when asked)."""
        remaining = [sb for sb in self._sandboxes.values() if sb.state == "destroy_failed"]
        for sandbox in remaining:
            if sandbox.retry_task is not None:
                sandbox.retry_task.cancel()
                sandbox.retry_task = None
        await asyncio.gather(*(self._destroy(sb) for sb in remaining), return_exceptions=True)
        await self._remove_unremoved()
        left = sorted({sb.sandbox_id for sb in self._sandboxes.values()} | self.provisioner.unremoved)
        if left:
            raise SandboxesNotDestroyedError(left, "the engine failed or did not answer")

    async def __aenter__(self) -> EnvManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add_listener(self, listener: ToolEventListener) -> None:
        self.events.add_listener(listener)

    def labels(self, program_id: str, sandbox_id: str) -> dict[str, str]:
        return {
            "thunder.managed": "1",
            "thunder.namespace": self.config.namespace,
            "thunder.instance": self.instance_id,
            "thunder.owner": self.owner.encode(),
            "thunder.program": program_id,
            "thunder.sandbox": sandbox_id,
        }

    async def reconcile(self) -> ReconcileReport:
        """Remove what dead earlier managers of this namespace left behind (never a live one's)."""
        return await reconcile_namespace(
            self.backend, self.config.namespace, self.instance_id, self.features.host_agent
        )

    # ----------------------------------------------------------------------- leases

    async def acquire(self, program_id: str, spec: SandboxSpec) -> Lease:
        """A sandbox for ``program_id``: a lingering one of the same spec, the one prepared for it,
        a warm one from the spec's pool, or a new one (from the spec's template if it has setup steps)."""
        _check_program_id(program_id)
        with self._starting_sandbox():
            key = spec.key()
            lingering = [sb for sb in self._sandboxes.values() if sb.state == "lingering" and sb.spec.key() == key]
            if lingering:
                lease = self._lease(program_id, lingering[0])
            else:
                handle, origin = await self.provisioner.provision(program_id, spec)
                lease = await self._adopt(program_id, spec, handle, origin)
        (lease,) = await self._handed_out([lease], spec, "acquire")
        return lease

    @contextlib.contextmanager
    def _starting_sandbox(self) -> Iterator[None]:
        """An acquire or fork in flight: refused once close() began, and waited for by close()."""
        if self._closed:
            raise ManagerClosedError()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting.add(done)
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise ManagerClosedError() from None  # close() stopped the work it waited on (a build...)
            raise
        finally:
            self._starting.discard(done)
            if not done.done():
                done.set_result(None)

    async def _adopt(self, program_id: str, spec: SandboxSpec, handle: BackendSandbox, origin: str) -> Lease:
        now = self._clock()
        sandbox = _Sandbox(handle.sandbox_id, spec, handle, created_at=now, last_used_at=now, origin=origin)
        self._sandboxes[handle.sandbox_id] = sandbox
        try:
            if self._closed:  # close() began while it was starting: nobody else would destroy it
                raise ManagerClosedError()
            for port in spec.ports:
                await self._open_port(sandbox, port)
            if disk_limit(spec, self.config.sandbox_disk_limit_bytes) is not None and not self._limits_disk():
                self._disk_limits.start()  # the driver cannot limit it: measure it
            return self._lease(program_id, sandbox)
        except BaseException:
            await asyncio.shield(self._destroy(sandbox))
            raise

    async def share(self, program_id: str, sandbox_id: str) -> Lease:
        """Another lease on an existing sandbox: it lives until its last lease is released."""
        _check_program_id(program_id)
        sandbox = self._live(sandbox_id)
        (lease,) = await self._handed_out([self._lease(program_id, sandbox)], sandbox.spec, "share")
        return lease

    async def release(self, lease: Lease) -> None:
        """Drop one reference; the sandbox goes with its last lease (after the linger time, if any)."""
        if lease.released:
            return
        remaining = self._leases.remove(lease, "released")
        sandbox = self._sandboxes.get(lease.sandbox_id)
        try:
            if sandbox is not None and remaining == 0:
                await self._last_lease_gone(sandbox)
        finally:
            await self._announce(*self._released([lease]))

    async def end_program(self, program_id: str) -> int:
        """Drop every lease of a program; returns how many sandboxes were destroyed as a result."""
        orphaned: list[_Sandbox] = []
        leases = self._leases.of_program(program_id)
        for lease in leases:
            if self._leases.remove(lease, f"program {program_id} ended") == 0:
                sandbox = self._sandboxes.get(lease.sandbox_id)
                if sandbox is not None:
                    orphaned.append(sandbox)
        try:
            await asyncio.gather(*(self._last_lease_gone(sb) for sb in orphaned))
        finally:
            try:
                # The program's snapshot holds go whatever became of its sandboxes (a failed removal is retried).
                await self.provisioner.end_program(program_id)
            finally:
                ended = ProgramEnded(program_id, len(leases), self.events.clock())
                await self._announce(*self._released(leases), ended)
        return sum(1 for sb in orphaned if sb.sandbox_id not in self._sandboxes)

    def leases_of(self, program_id: str) -> list[Lease]:
        return self._leases.of_program(program_id)

    def programs(self) -> list[str]:
        return self._leases.programs()

    def sandboxes(self, program_id: str | None = None) -> list[SandboxInfo]:
        infos = [self._info(sb) for sb in self._sandboxes.values() if sb.state != "destroying"]
        if program_id is not None:
            infos = [info for info in infos if program_id in info.programs]
        return sorted(infos, key=lambda info: info.created_at)

    def sandbox_info(self, lease: Lease) -> SandboxInfo:
        return self._info(self._checked(lease))

    def sandbox_spec(self, lease: Lease) -> SandboxSpec:
        """The spec the leased sandbox was made from (its workdir, user, limits...)."""
        return self._checked(lease).spec

    # ------------------------------------------------------------------- operations

    async def exec(
        self,
        lease: Lease,
        command: Command,
        *,
        timeout_s: float | _Default | None = DEFAULT,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: bytes | None = None,
        user: str | None = None,
        output_limit: int | None = None,
        on_output: Callable[[OutputChunk], None] | None = None,
        tool: str = "exec",
    ) -> ExecResult:
        """Run a command (a string runs in ``/bin/sh -c``; a list is argv) and wait for it."""
        sandbox = self._checked(lease)
        request = self._request(sandbox, command, timeout_s, env, workdir, stdin, user, output_limit)
        async with self._tool_call(lease, sandbox, tool, command_word(request.argv)) as outcome:
            result = await self.backend.exec(sandbox.sandbox_id, request, on_output)
            outcome.exit_code = result.exit_code
            return result

    async def exec_stream(
        self,
        lease: Lease,
        command: Command,
        *,
        timeout_s: float | _Default | None = DEFAULT,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: bytes | None = None,
        user: str | None = None,
        tool: str = "exec",
    ) -> AsyncIterator[OutputChunk | ExecResult]:
        """Yields output chunks as they come, then the ExecResult last. Closing early kills the command."""
        queue: asyncio.Queue[OutputChunk | ExecResult | BaseException] = asyncio.Queue()

        async def run() -> None:
            try:
                result = await self.exec(
                    lease, command, timeout_s=timeout_s, env=env, workdir=workdir, stdin=stdin, user=user,
                    on_output=queue.put_nowait, tool=tool,
                )
                queue.put_nowait(result)
            except Exception as exc:
                queue.put_nowait(exc)

        task = asyncio.create_task(run())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, ExecResult):
                    return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def read_file(
        self, lease: Lease, path: str, offset: int = 0, length: int | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        """The file's bytes; a file over ``max_bytes`` (at most the manager's ``max_read_bytes``) raises
        ``FileTooLargeError`` without being loaded."""
        sandbox = self._checked(lease)
        full = files.resolve_path(sandbox.spec.workdir, path)
        limit = self.config.max_read_bytes if max_bytes is None else min(max_bytes, self.config.max_read_bytes)
        async with self._tool_call(lease, sandbox, "file_read"):
            return await files.read_file(self.backend, sandbox.sandbox_id, full, offset, length, limit)

    async def write_file(self, lease: Lease, path: str, data: bytes, mode: int = 0o644) -> str:
        """Write a file, creating missing parent directories. Returns the absolute path written."""
        sandbox = self._checked(lease)
        if path.endswith("/"):
            raise FileOperationError(path, "is a directory path; give a file name")
        full = files.resolve_path(sandbox.spec.workdir, path)
        async with self._tool_call(lease, sandbox, "file_write"):
            await files.write_file(self.backend, sandbox.sandbox_id, full, data, mode)
        return full

    async def list_dir(self, lease: Lease, path: str = ".") -> list[FileEntry]:
        sandbox = self._checked(lease)
        full = files.resolve_path(sandbox.spec.workdir, path)
        async with self._tool_call(lease, sandbox, "file_list"):
            return await files.list_dir(self.backend, sandbox.sandbox_id, full, sandbox.spec.user)

    async def upload_tar(self, lease: Lease, dest_dir: str, archive: bytes) -> None:
        sandbox = self._checked(lease)
        full = files.resolve_path(sandbox.spec.workdir, dest_dir)
        async with self._tool_call(lease, sandbox, "upload"):
            await self.backend.put_archive(sandbox.sandbox_id, full, archive)

    async def download_tar(self, lease: Lease, path: str) -> bytes:
        sandbox = self._checked(lease)
        full = files.resolve_path(sandbox.spec.workdir, path)
        async with self._tool_call(lease, sandbox, "download"):
            return await self.backend.get_archive(sandbox.sandbox_id, full)

    async def expose_port(self, lease: Lease, container_port: int) -> PortBinding:
        """Make a sandbox port reachable on the host's loopback; freed with the sandbox."""
        sandbox = self._checked(lease)
        return (await self._open_port(sandbox, container_port)).binding

    # ------------------------------------------------------------ snapshots, forks, disk limits

    async def snapshot(self, lease: Lease) -> SnapshotInfo:
        """Capture the sandbox's filesystem as a new layer on its image's layers, held by the lease's program
        until the program ends or calls ``provisioner.release_snapshot``. Refused while over the disk budget."""
        sandbox = self._checked(lease)
        await self.provisioner.snapshot_room()
        async with self._tool_call(lease, sandbox, "snapshot"):
            return await self.provisioner.commit_snapshot(sandbox.sandbox_id, sandbox.spec, lease.program_id)

    async def fork(self, program_id: str, snapshot_id: str, n: int = 1) -> list[Lease]:
        """Start ``n`` sandboxes from a snapshot, each on its own copy-on-write layer; all or none."""
        with self._starting_sandbox():
            async with self.provisioner.forks(program_id, snapshot_id, n) as (spec, handles):
                leases = await self._adopt_all(program_id, spec, handles)
        return await self._handed_out(leases, spec, "fork")

    async def check_disk_limits(self) -> list[str]:
        """Stop the sandboxes whose writable layer passed their disk limit (also done every
        ``disk_check_interval_s`` where the storage driver does not enforce it); returns their ids."""
        return [overrun.sandbox_id for overrun in await self._disk_limits.check()]

    async def _adopt_all(self, program_id: str, spec: SandboxSpec, handles: list[BackendSandbox]) -> list[Lease]:
        leases: list[Lease] = []
        try:
            for handle in handles:
                leases.append(await self._adopt(program_id, spec, handle, "fork"))
        except BaseException:
            adopted = {lease.sandbox_id for lease in leases}
            rest = [h for h in handles if h.sandbox_id not in adopted and h.sandbox_id not in self._sandboxes]
            cleanup = [self._destroy(self._sandboxes[sid]) for sid in adopted if sid in self._sandboxes]
            cleanup += [self.provisioner.discard(h.sandbox_id) for h in rest]
            await asyncio.shield(asyncio.gather(*cleanup, return_exceptions=True))
            raise
        return leases

    def _limits_disk(self) -> bool:
        return self.features.disk.enforces_disk_limit is True

    def _sandbox_disk_limits(self) -> dict[str, int]:
        """Adopted sandboxes only: warm and prepared ones run no program's commands yet."""
        limits: dict[str, int] = {}
        for sandbox_id, sandbox in self._sandboxes.items():
            limit = disk_limit(sandbox.spec, self.config.sandbox_disk_limit_bytes)
            if limit is not None and sandbox.state != "destroying":
                limits[sandbox_id] = limit
        return limits

    async def _stop_over_disk(self, overrun: DiskOverrun) -> None:
        sandbox = self._sandboxes.get(overrun.sandbox_id)
        if sandbox is None or sandbox.state == "destroying":
            return
        # The reason reaches the program: every later call on its lease raises LeaseReleasedError with it.
        leases = self._leases.of_sandbox(overrun.sandbox_id)
        for lease in leases:
            self._leases.remove(lease, overrun.reason)
        try:
            await self._destroy(sandbox)
        finally:
            await self._announce(*self._released(leases))

    def _sandbox_programs(self) -> dict[str, list[str]]:
        return {sid: [lease.program_id for lease in self._leases.of_sandbox(sid)] for sid in self._sandboxes}

    # -------------------------------------------------------------------- internals

    async def _handed_out(
        self, leases: list[Lease], spec: SandboxSpec, via: Literal["acquire", "share", "fork"]
    ) -> list[Lease]:
        """Tell lifecycle listeners about new leases. Cancelled meanwhile, the caller never gets them: they
        are released (not left to the program's end)."""
        now = self.events.clock()
        events = [SandboxAcquired(ls.program_id, ls.sandbox_id, ls.lease_id, spec, via, now) for ls in leases]
        try:
            await self._announce(*events)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.gather(*(self.release(lease) for lease in leases)))
            raise
        return leases

    def _released(self, leases: Sequence[Lease]) -> list[SandboxReleased]:
        now = self.events.clock()
        return [SandboxReleased(ls.program_id, ls.sandbox_id, ls.lease_id, ls.release_reason, now) for ls in leases]

    async def _announce(self, *events: LifecycleEvent) -> None:
        """Lifecycle events to listeners (a failing listener is logged by the bus); shielded, so a cancelled
        caller does not cut the others short."""
        if events:
            await asyncio.shield(self.events.emit_lifecycle(*events))

    def _lease(self, program_id: str, sandbox: _Sandbox) -> Lease:
        if sandbox.state == "lingering":
            if sandbox.linger_task is not None:
                sandbox.linger_task.cancel()
                sandbox.linger_task = None
            sandbox.state = "ready"
        sandbox.last_used_at = self._clock()
        return self._leases.add(program_id, sandbox.sandbox_id)

    def _live(self, sandbox_id: str) -> _Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.state in ("destroying", "destroy_failed"):
            raise SandboxNotFoundError(sandbox_id)
        return sandbox

    def _checked(self, lease: Lease) -> _Sandbox:
        if lease.released:
            raise LeaseReleasedError(lease.lease_id, lease.sandbox_id, lease.release_reason)
        if self._leases.get(lease.lease_id) is not lease:
            raise LeaseReleasedError(lease.lease_id, lease.sandbox_id, "not issued by this manager")
        sandbox = self._live(lease.sandbox_id)
        sandbox.last_used_at = self._clock()
        return sandbox

    def _request(
        self,
        sandbox: _Sandbox,
        command: Command,
        timeout_s: float | _Default | None,
        env: Mapping[str, str] | None,
        workdir: str | None,
        stdin: bytes | None,
        user: str | None,
        output_limit: int | None,
    ) -> ExecRequest:
        if isinstance(command, str):
            if not command.strip():
                raise InvalidSpecError("command is empty")
            argv: list[str] = ["/bin/sh", "-c", command]
        else:
            argv = list(command)
            if not argv or not all(isinstance(a, str) for a in argv):
                raise InvalidSpecError("argv must be a non-empty list of strings")
        timeout = self.config.default_exec_timeout_s if isinstance(timeout_s, _Default) else timeout_s
        if timeout is not None and not 0 < timeout <= self.config.max_exec_timeout_s:
            raise InvalidSpecError(
                f"timeout_s must be in (0, {self.config.max_exec_timeout_s:g}] seconds, got {timeout}"
            )
        if output_limit is not None and output_limit < 2:
            raise InvalidSpecError("output_limit must be at least 2 bytes")
        return ExecRequest(
            argv=argv,
            marker=secrets.token_hex(8),
            env=dict(env or {}),
            workdir=files.resolve_path(sandbox.spec.workdir, workdir) if workdir else None,
            user=sandbox.spec.user if user is None else user,
            stdin=stdin,
            timeout_s=timeout,
            output_limit=output_limit or self.config.output_limit_bytes,
        )

    @contextlib.asynccontextmanager
    async def _tool_call(
        self, lease: Lease, sandbox: _Sandbox, tool: str, command: str | None = None
    ) -> AsyncIterator[_Outcome]:
        outcome = _Outcome()
        call_id = secrets.token_hex(6)
        started = time.monotonic()
        start = ToolEvent(
            "tool_start", lease.program_id, sandbox.sandbox_id, tool, call_id, self.events.clock(), command=command
        )
        sandbox.busy += 1
        try:
            # Inside the try: a call cancelled while its start is delivered still unmarks the sandbox
            # (else it stays busy and is never reaped), and listeners get its tool_end.
            await self.events.emit(start)
            yield outcome
        except (SandboxDeadError, SandboxNotFoundError) as exc:
            # The engine says the container stopped or vanished (a dockerd restart, `docker kill`):
            # every program holding it must hear it, not only this caller.
            if self._sandboxes.get(sandbox.sandbox_id) is sandbox:
                await asyncio.shield(self._sandbox_died(sandbox, _death_reason(exc)))
            raise
        finally:
            sandbox.busy -= 1
            sandbox.last_used_at = self._clock()
            end = ToolEvent(
                "tool_end", lease.program_id, sandbox.sandbox_id, tool, call_id, self.events.clock(),
                duration_s=time.monotonic() - started, exit_code=outcome.exit_code, command=command,
            )
            await asyncio.shield(self.events.emit(end))

    async def _open_port(self, sandbox: _Sandbox, container_port: int) -> PortForwarder:
        if not 1 <= container_port <= 65535:
            raise PortExposeError(f"port {container_port} is outside 1..65535")
        if sandbox.handle.address is None:
            raise PortExposeError(
                f"sandbox {sandbox.sandbox_id} has no network (network='{sandbox.spec.network}'); "
                "create it with network='internal' to expose ports"
            )
        # Serialized per sandbox: two concurrent exposes of one port get the same forwarder, never two.
        async with sandbox.port_lock:
            existing = sandbox.forwarders.get(container_port)
            if existing is not None:
                return existing
            forwarder = await PortForwarder.open(
                sandbox.sandbox_id, self.config.port_host, sandbox.handle.address, container_port
            )
            if sandbox.state == "destroying":  # its forwarders were closed meanwhile: this one would linger
                await forwarder.close()
                raise SandboxNotFoundError(sandbox.sandbox_id)
            sandbox.forwarders[container_port] = forwarder
            return forwarder

    async def _last_lease_gone(self, sandbox: _Sandbox) -> None:
        if self.config.linger_s > 0 and sandbox.state == "ready" and not self._closed:
            sandbox.state = "lingering"
            sandbox.linger_task = asyncio.create_task(self._linger(sandbox))
            return
        await self._destroy(sandbox)

    async def _linger(self, sandbox: _Sandbox) -> None:
        await asyncio.sleep(self.config.linger_s)
        if sandbox.state == "lingering" and self._leases.count(sandbox.sandbox_id) == 0:
            sandbox.linger_task = None
            await self._destroy(sandbox)

    async def _destroy(self, sandbox: _Sandbox) -> None:
        """Remove the sandbox. Never raises but a cancel: a failed removal keeps the sandbox tracked
        (``destroy_failed``) and retries it with backoff, so no container is ever forgotten."""
        if sandbox.state == "destroying":
            # One is under way (a linger timer, the reaper): close() and the rest return once it is done.
            await sandbox.gone.wait()
            return
        sandbox.state = "destroying"
        if sandbox.linger_task is not None and sandbox.linger_task is not asyncio.current_task():
            sandbox.linger_task.cancel()
        if sandbox.retry_task is not None and sandbox.retry_task is not asyncio.current_task():
            sandbox.retry_task.cancel()
        sandbox.retry_task = None
        for lease in self._leases.of_sandbox(sandbox.sandbox_id):
            self._leases.remove(lease, "sandbox destroyed")
        try:
            await asyncio.gather(*(fw.close() for fw in sandbox.forwarders.values()), return_exceptions=True)
            await self._remove_container(sandbox.sandbox_id)
        except asyncio.CancelledError:
            self._destroy_failed(sandbox, "its removal was cancelled")
            raise
        except Exception as exc:
            self._destroy_failed(sandbox, str(exc))
            return
        self._sandboxes.pop(sandbox.sandbox_id, None)
        sandbox.gone.set()
        # Only once the container is gone: the engine keeps a snapshot's image while a container uses it.
        await self.provisioner.sandbox_gone(sandbox.sandbox_id)

    async def _remove_container(self, sandbox_id: str) -> None:
        try:
            async with asyncio.timeout(self.config.engine_timeout_s):
                await self.backend.destroy(sandbox_id)
        except TimeoutError as exc:
            raise EngineStuckError(
                f"the container engine did not remove sandbox {sandbox_id} within "
                f"{self.config.engine_timeout_s:g} s; check that dockerd answers (`docker ps`)"
            ) from exc

    async def _remove_unremoved(self) -> None:
        """Retry the removals that failed outside a tracked sandbox: half-started sandboxes, images of
        failed snapshots, and what the backend made beside sandboxes (a program's network). Kept and
        logged while they fail."""
        await self.provisioner.retry_removals()
        try:
            async with asyncio.timeout(self.config.engine_timeout_s):
                left = await self.backend.retry_removals()
        except Exception as exc:
            log.warning("removals the engine refused earlier failed again: %s", exc)
            return
        if left:
            log.warning("the engine still refuses to remove %s; retried later (reconcile removes them otherwise)",
                        ", ".join(left))

    def _destroy_failed(self, sandbox: _Sandbox, why: str) -> None:
        sandbox.state = "destroy_failed"
        sandbox.destroy_attempts += 1
        waiting, sandbox.gone = sandbox.gone, asyncio.Event()
        waiting.set()  # whoever waited on this attempt goes on; the sandbox stays listed
        log.warning(
            "sandbox %s could not be removed (attempt %d: %s); it stays tracked and is retried",
            sandbox.sandbox_id, sandbox.destroy_attempts, why,
        )
        if not self._closed:
            sandbox.retry_task = asyncio.create_task(self._retry_destroy(sandbox), name="thunder-env-destroy-retry")

    async def _retry_destroy(self, sandbox: _Sandbox) -> None:
        backoff = self.config.destroy_retry_s * 2 ** min(sandbox.destroy_attempts - 1, 16)
        await asyncio.sleep(min(backoff, MAX_DESTROY_RETRY_S))
        if sandbox.state == "destroy_failed":
            sandbox.retry_task = None
            await self._destroy(sandbox)

    async def _sandbox_died(self, sandbox: _Sandbox, reason: str) -> None:
        """Its container stopped behind the manager's back: revoke its leases, tell its programs, remove it."""
        if sandbox.died is not None or sandbox.state not in ("ready", "lingering"):
            return
        sandbox.died = reason
        leases = self._leases.of_sandbox(sandbox.sandbox_id)
        for lease in leases:
            self._leases.remove(lease, f"sandbox died: {reason}")
        log.warning("sandbox %s died (%s); its %d lease(s) are revoked", sandbox.sandbox_id, reason, len(leases))
        try:
            for program_id in sorted({lease.program_id for lease in leases}):
                await self.events.emit_sandbox(
                    SandboxEvent("sandbox_dead", program_id, sandbox.sandbox_id, reason, self.events.clock())
                )
            await self._destroy(sandbox)
        finally:
            await self._announce(*self._released(leases))

    async def check_health(self) -> list[str]:
        """Find this manager's sandboxes whose container stopped or vanished (reported dead to their
        programs), and remove this instance's containers nobody here answers for (see ``_remove_orphans``).
        Returns the dead ones."""
        since = self._clock()
        labels = {
            "thunder.managed": "1", "thunder.namespace": self.config.namespace, "thunder.instance": self.instance_id
        }
        try:
            async with asyncio.timeout(self.config.engine_timeout_s):
                found = await self.backend.list_managed(labels)
        except TimeoutError as exc:
            raise EngineStuckError(
                f"the container engine did not list containers within {self.config.engine_timeout_s:g} s"
            ) from exc
        containers = {r.labels.get("thunder.sandbox", ""): r for r in found if r.kind == "container"}
        retried = set(self.provisioner.unremoved)
        await self._remove_unremoved()  # first: what failed to go is retried by its own path
        self.orphan_report = await self._remove_orphans(containers, retried)
        dead: list[_Sandbox] = []
        for sandbox in list(self._sandboxes.values()):
            if sandbox.state not in ("ready", "lingering") or sandbox.created_at >= since:
                continue  # adopted while the list was taken: it may simply not be in it
            container = containers.get(sandbox.sandbox_id)
            if container is None or container.state in _STOPPED_STATES:
                dead.append(sandbox)
        for sandbox in dead:
            container = containers.get(sandbox.sandbox_id)
            reason = "its container is gone" if container is None else f"its container is {container.state}"
            await self._sandbox_died(sandbox, reason)
        return [sb.sandbox_id for sb in dead]

    async def _remove_orphans(self, containers: Mapping[str, ManagedResource], retried: set[str]) -> ReconcileReport:
        """Remove containers of this instance that are no sandbox, pool member, preparation or template
        build of this manager: a destroy the engine did not do, a create whose answer was lost and whose
        cleanup failed. A create in flight is safe: its id is in hand before the engine call."""
        report = ReconcileReport()
        for sandbox_id, container in containers.items():
            # Judged now, not when the list was taken: no await between this test and the removal.
            if not sandbox_id or sandbox_id in self._sandboxes or sandbox_id in retried:
                continue  # retried: _remove_unremoved's to retry
            if self.provisioner.answers_for(sandbox_id):  # starting, warm, prepared, building a template
                continue
            log.warning("container %s of sandbox %s is this manager's but nothing here holds it: removing it",
                        container.resource_id[:12], sandbox_id)
            try:
                await self._remove_container(sandbox_id)  # by sandbox id: its host directory and network go too
            except Exception as exc:  # one failure stops nothing: the next check tries again
                log.warning("could not remove container %s: %s", container.resource_id[:12], exc)
                report.failed.append((container, str(exc)))
                continue
            report.removed.append(container)
        self.orphans_removed += len(report.removed)
        return report

    async def reap_idle(self) -> list[str]:
        """Reclaim sandboxes unused for longer than the idle TTL. Returns their ids."""
        ttl = self.config.idle_ttl_s
        if ttl is None:
            return []
        now = self._clock()
        idle = [
            sb for sb in self._sandboxes.values()
            if sb.state == "ready" and sb.busy == 0 and now - sb.last_used_at > ttl
        ]
        reclaimed: list[Lease] = []
        for sandbox in idle:
            for lease in self._leases.of_sandbox(sandbox.sandbox_id):
                self._leases.remove(lease, f"reclaimed after {ttl:g} s idle")
                reclaimed.append(lease)
            log.info("reclaiming idle sandbox %s", sandbox.sandbox_id)
        try:
            await asyncio.gather(*(self._destroy(sb) for sb in idle), return_exceptions=True)
        finally:
            await self._announce(*self._released(reclaimed))
        return [sb.sandbox_id for sb in idle]

    def _info(self, sandbox: _Sandbox) -> SandboxInfo:
        leases = self._leases.of_sandbox(sandbox.sandbox_id)
        return SandboxInfo(
            sandbox_id=sandbox.sandbox_id,
            image=sandbox.spec.image,
            state=sandbox.state,
            programs=tuple(sorted({lease.program_id for lease in leases})),
            lease_count=len(leases),
            created_at=sandbox.created_at,
            last_used_at=sandbox.last_used_at,
            ports=tuple(fw.binding for fw in sandbox.forwarders.values()),
            origin=sandbox.origin,
        )


@dataclass(slots=True)
class _Outcome:
    exit_code: int | None = None


def _death_reason(exc: Exception) -> str:
    return "its container is gone" if isinstance(exc, SandboxNotFoundError) else "its container is not running"
