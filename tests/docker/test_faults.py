"""Failure paths of the manager on the real engine, with faults injected around the real backend
(issue 11, items 11, 13, 14, 15): nothing is forgotten, nothing leaks, every program hears."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import psutil
import pytest

from thunder_env import EnvManager, Lease, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend
from thunder_env.errors import (
    BackendError,
    EngineStuckError,
    LeaseReleasedError,
    SandboxDeadError,
    SandboxesNotDestroyedError,
)
from thunder_env.events import SandboxEvent
from thunder_env.testing.faults import FaultyBackend

from ._helpers import containers_labelled, eventually, image_exists
from .conftest import leftovers
from .test_reconcile import _start_holder

Factory = Callable[..., Awaitable[EnvManager]]


@pytest.fixture
async def faults(backend: DockerBackend) -> FaultyBackend:
    return FaultyBackend(backend)


@pytest.fixture
async def make_faulty(faults: FaultyBackend, backend: DockerBackend) -> AsyncIterator[Factory]:
    made: list[EnvManager] = []

    async def factory(**config: object) -> EnvManager:
        config.setdefault("namespace", "test-faults-" + secrets.token_hex(4))
        manager = EnvManager(faults, ManagerConfig(**config))  # type: ignore[arg-type]
        await manager.start()
        made.append(manager)
        return manager

    yield factory
    faults.clear()
    for manager in made:
        await manager.close()
        assert await leftovers(backend, manager.config.namespace) == []
        assert not (backend.agent_run_dir / manager.config.namespace).exists(), "host directories leaked"


async def test_a_failed_destroy_keeps_the_sandbox_tracked_and_retries(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(destroy_retry_s=0.2)
    lease = await manager.acquire("p", base_spec)
    faults.fail("destroy", BackendError("Docker Engine error 500: driver failed"), times=1)
    await manager.release(lease)  # the release itself succeeds: the manager owns the retry
    [info] = manager.sandboxes()
    assert info.state == "destroy_failed" and info.sandbox_id == lease.sandbox_id
    assert await backend.is_running(lease.sandbox_id)  # not forgotten while its container runs

    async def gone() -> bool:
        return not manager.sandboxes() and not await backend.is_running(lease.sandbox_id)

    await eventually(gone, what="the retried destroy removes the container")


async def test_end_program_drops_snapshot_holds_even_when_a_destroy_fails(
    make_faulty: Factory, faults: FaultyBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(destroy_retry_s=0.2)
    lease = await manager.acquire("p", base_spec)
    await manager.snapshot(lease)
    faults.fail("destroy", BackendError("Docker Engine error 500: driver failed"), times=1)
    await manager.end_program("p")
    assert manager.provisioner.snapshots() == []  # the program's hold went, and with it the snapshot
    await eventually(lambda: _true(not manager.sandboxes()), what="the retried destroy")


async def test_a_hung_engine_fails_destroy_and_close_in_time_with_a_typed_error(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    # Long enough for a real removal on a busy host; the hang fails it all the same.
    manager = await make_faulty(engine_timeout_s=5.0, destroy_retry_s=3600)
    lease = await manager.acquire("p", base_spec)
    hang = faults.hang("destroy")
    async with asyncio.timeout(60):  # a guard against hanging forever, not a speed check
        await manager.release(lease)
        assert [i.state for i in manager.sandboxes()] == ["destroy_failed"]
        with pytest.raises(SandboxesNotDestroyedError, match=lease.sandbox_id):
            await manager.close()
    assert hang.fired >= 2 and await backend.is_running(lease.sandbox_id)  # nothing forgotten
    faults.remove(hang)
    await manager.close()  # closing again retries
    assert manager.sandboxes() == [] and not await backend.is_running(lease.sandbox_id)


async def test_a_hung_engine_is_reported_as_stuck(
    make_faulty: Factory, faults: FaultyBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(engine_timeout_s=0.5)
    faults.hang("list_managed")
    with pytest.raises(EngineStuckError, match="did not list"):
        await manager.check_health()


async def test_a_container_left_after_a_destroy_is_found_and_removed(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty()
    lease = await manager.acquire("p", base_spec)
    faults.swallow("destroy", times=1)  # the engine said yes and did nothing
    await manager.release(lease)
    assert manager.sandboxes() == [] and await backend.is_running(lease.sandbox_id)
    await manager.check_health()
    assert not await backend.is_running(lease.sandbox_id)


async def test_a_container_killed_behind_the_managers_back_is_reported_to_its_program(
    make_faulty: Factory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty()
    heard = _sandbox_events(manager)
    lease = await manager.acquire("p", base_spec)
    await manager.exec(lease, "true")
    await backend.client.containers.container("thunder-" + lease.sandbox_id).kill()
    with pytest.raises(SandboxDeadError):
        await manager.exec(lease, "true")
    assert [(e.kind, e.program_id, e.sandbox_id) for e in heard] == [("sandbox_dead", "p", lease.sandbox_id)]
    with pytest.raises(LeaseReleasedError, match="sandbox died"):
        await manager.exec(lease, "true")
    await eventually(lambda: _true(not manager.sandboxes()), what="the dead sandbox is removed")


async def test_the_health_check_finds_dead_sandboxes_without_a_call(
    make_faulty: Factory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(health_interval_s=0.2)
    heard = _sandbox_events(manager)
    lease = await manager.acquire("p", base_spec)
    await backend.client.containers.container("thunder-" + lease.sandbox_id).kill()
    await eventually(lambda: _true(bool(heard)), what="the periodic check reports the dead sandbox")
    assert heard[0].program_id == "p" and "exited" in heard[0].reason
    assert lease.released and "sandbox died" in (lease.release_reason or "")


async def test_an_engine_restart_reported_by_exec_revokes_and_tells(
    make_faulty: Factory, faults: FaultyBackend, base_spec: SandboxSpec
) -> None:
    """What a dockerd restart looks like to the manager: its containers stop, execs fail as not running."""
    manager = await make_faulty()
    heard = _sandbox_events(manager)
    a = await manager.acquire("a", base_spec)
    b = await manager.share("b", a.sandbox_id)
    faults.fail("exec", SandboxDeadError(a.sandbox_id, "Container is not running"))
    with pytest.raises(SandboxDeadError):
        await manager.exec(a, "true")
    assert sorted(e.program_id for e in heard) == ["a", "b"] and b.released


async def test_a_stopped_agent_costs_one_wait_and_runs_nothing_twice(
    make_faulty: Factory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty()
    lease = await manager.acquire("p", base_spec)
    await manager.exec(lease, "true")
    assert backend.agent_socket(lease.sandbox_id) is not None
    # The agent's server (`agent serve`, forked by its supervisor under docker-init): stop it from the host.
    info = await backend.client.containers.container("thunder-" + lease.sandbox_id).show()
    agent_pid = _agent_server(info["State"]["Pid"])
    fallbacks = backend.fallback_execs
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        results = [await manager.exec(lease, "echo x >> /tmp/count") for _ in range(3)]
        assert all(r.exit_code == 0 for r in results)
        # Only the first call waited for the agent; the others went straight to the Engine API.
        assert backend.fallback_execs - fallbacks == 1
        assert backend.agent_unresponsive(lease.sandbox_id)
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    count = await manager.exec(lease, "wc -l < /tmp/count")
    assert count.stdout.text.strip() == "3"  # each command ran exactly once


async def test_reconcile_goes_on_past_a_failed_removal(faults: FaultyBackend, backend: DockerBackend) -> None:
    namespace = "test-faults-" + secrets.token_hex(4)
    proc, _ = await _start_holder(namespace)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    faults.fail("remove_managed", BackendError("Docker Engine error 500: device busy"), on_call=1)
    manager = EnvManager(faults, ManagerConfig(namespace=namespace))  # type: ignore[arg-type]
    report = await manager.start()  # does not abort
    try:
        assert report is not None and report.removed_containers == 1 and len(report.failed) == 1
        assert "device busy" in report.failed[0][1]
        again = await manager.reconcile()
        assert again.removed_containers == 1 and again.failed == []
        assert await leftovers(backend, namespace) == []
    finally:
        await manager.close()
    assert not (backend.agent_run_dir / namespace).exists()


def _sandbox_events(manager: EnvManager) -> list[SandboxEvent]:
    heard: list[SandboxEvent] = []

    async def listener(event: SandboxEvent) -> None:
        heard.append(event)

    manager.events.add_sandbox_listener(listener)
    return heard


async def _true(value: bool) -> bool:
    return value


def _agent_server(root_pid: int) -> int:
    for child in psutil.Process(root_pid).children(recursive=True):
        if child.cmdline()[1:2] == ["serve"]:
            return child.pid
    pytest.fail(f"no agent server under pid {root_pid}")


async def test_long_engine_execs_do_not_starve_control_calls(base_spec: SandboxSpec) -> None:
    """Streams (exec output, archives) have their own connection budget: with every stream connection
    taken by a running command, control calls (inspect, remove) still go through."""
    namespace = "test-faults-" + secrets.token_hex(4)
    async with DockerBackend(exec_agent=False, stream_connections=2, control_connections=2) as backend:
        manager = EnvManager(backend, ManagerConfig(namespace=namespace))
        await manager.start()
        try:
            lease = await manager.acquire("p", base_spec)
            running = [asyncio.create_task(manager.exec(lease, "sleep 60")) for _ in range(2)]
            await eventually(lambda: _commands_running(backend, lease, 2), what="both commands run")
            assert await backend.is_running(lease.sandbox_id)  # not queued behind the streams
            assert not any(task.done() for task in running)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        finally:
            await manager.close()
        assert await leftovers(backend, namespace) == []
        assert not (backend.agent_run_dir / namespace).exists()


async def _commands_running(backend: DockerBackend, lease: Lease, count: int) -> bool:
    listed = await backend.client.containers.container("thunder-" + lease.sandbox_id).top()
    return sum(1 for row in listed["Processes"] if "sleep 60" in row[-1]) >= count


async def test_a_container_of_this_manager_that_nothing_holds_is_found_and_removed(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    """Item 11: the health check reconciles the manager's own instance. A container with its labels that
    nothing in it holds goes; live sandboxes, pool members, snapshots and a create in flight stay."""
    manager = await make_faulty(health_interval_s=None)  # checked by hand below
    live = await manager.acquire("p", base_spec)
    snapshot = await manager.snapshot(live)
    pool_spec = SandboxSpec(**{**base_spec.model_dump(), "env": {"ROLE": "pool"}})
    await manager.provisioner.configure_pool(pool_spec, min_size=1, max_size=1)
    await manager.provisioner.wait_for_pool(pool_spec, at_least=1)
    [warm] = await containers_labelled(backend, thunder__instance=manager.instance_id, thunder__program="pool")
    # A create whose container exists but whose answer has not reached the manager yet.
    slow_spec = SandboxSpec(**{**base_spec.model_dump(), "env": {"ROLE": "slow"}})
    faults.delay("create", 15.0, after=True, when=lambda args, kwargs: args[1].env.get("ROLE") == "slow")
    creating = asyncio.create_task(manager.acquire("slow", slow_spec))

    async def in_flight() -> list[str]:
        return await containers_labelled(backend, thunder__instance=manager.instance_id, thunder__program="slow")

    await eventually(_holds(in_flight, True), what="the slow create's container exists")
    [slow] = await in_flight()
    # What a lost create leaves: a container with this manager's own labels that it never adopted.
    lost = "sb-lost-" + secrets.token_hex(4)
    await backend.create(lost, base_spec, manager.labels("p", lost))

    await manager.check_health()
    assert not creating.done(), "the slow create answered before the check: the test proves nothing"
    assert not await backend.is_running(lost)
    assert [r.labels["thunder.sandbox"] for r in manager.orphan_report.removed] == [lost]
    assert manager.orphans_removed == 1
    for kept in (live.sandbox_id, warm, slow):
        assert await backend.is_running(kept), f"{kept} was removed"
    assert await image_exists(backend, snapshot.image_id)
    slow_lease = await creating  # the create in flight completes and its sandbox works
    assert slow_lease.sandbox_id == slow
    assert (await manager.exec(slow_lease, "echo $ROLE")).stdout.text.strip() == "slow"
    assert (await manager.exec(live, "true")).exit_code == 0
    assert (await manager.provisioner.wait_for_pool(pool_spec, at_least=1)).warm == 1
    assert [s.snapshot_id for s in manager.provisioner.snapshots()] == [snapshot.snapshot_id]


async def test_a_lost_create_whose_cleanup_failed_is_removed_by_the_health_check(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(health_interval_s=0.2)
    # The engine made the container, the answer was lost, and the manager's own removal failed too.
    faults.fail("create", BackendError("Docker Engine error 500: connection reset"), after=True, times=1)
    faults.fail("destroy", BackendError("Docker Engine error 500: driver failed"), times=1)
    with pytest.raises(BackendError):  # the failed cleanup's error, the lost answer's as its context
        await manager.acquire("p", base_spec)
    assert manager.sandboxes() == []

    async def left() -> list[str]:
        return await containers_labelled(backend, thunder__instance=manager.instance_id)

    assert await left(), "the lost create left no container: the test proves nothing"
    await eventually(_holds(left, False), what="the periodic check removes the lost create's container")
    assert (await manager.acquire("p", base_spec)).sandbox_id  # and the manager goes on


def _holds(probe: Callable[[], Awaitable[list[str]]], found: bool) -> Callable[[], Awaitable[bool]]:
    """A check for ``eventually``: ``probe`` finds something (found=True) or nothing (found=False)."""

    async def check() -> bool:
        return bool(await probe()) == found

    return check


async def test_a_failed_acquire_whose_cleanup_fails_is_removed_later_not_forgotten(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    # Found by the chaos benchmark: the engine made the container but its answer was lost, and the
    # removal of that half-started sandbox failed too; nobody tracked it, so it ran until a reconcile.
    manager = await make_faulty(health_interval_s=None)
    faults.fail("create", BackendError("Docker Engine error 500: answer lost"), after=True, times=1)
    faults.fail("destroy", BackendError("Docker Engine error 500: driver failed"), times=1)
    with pytest.raises(BackendError, match="answer lost"):
        await manager.acquire("p", base_spec)
    [left] = await leftovers(backend, manager.config.namespace)  # still there: its removal failed
    assert left.startswith("container")
    await manager.check_health()  # the health check retries it
    assert await leftovers(backend, manager.config.namespace) == []
    assert not (backend.agent_run_dir / manager.config.namespace).exists(), "its host directory leaked"


async def test_close_removes_a_half_started_sandbox_whose_cleanup_failed(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(health_interval_s=None)
    faults.fail("create", BackendError("Docker Engine error 500: answer lost"), after=True, times=1)
    faults.fail("destroy", BackendError("Docker Engine error 500: driver failed"), times=1)
    with pytest.raises(BackendError, match="answer lost"):
        await manager.acquire("p", base_spec)
    await manager.close()
    assert await leftovers(backend, manager.config.namespace) == []
    assert not (backend.agent_run_dir / manager.config.namespace).exists(), "its host directory leaked"


async def test_the_image_of_a_failed_snapshot_is_removed_later_when_its_removal_fails(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    # Found by the chaos benchmark: a commit whose answer was lost made an image; its removal failed
    # once, was logged, and the image stayed for good (no record of it was kept).
    manager = await make_faulty(health_interval_s=None)
    lease = await manager.acquire("p", base_spec)
    faults.fail("commit", BackendError("Docker Engine error 500: answer lost"), after=True, times=1)
    faults.fail("remove_image", BackendError("Docker Engine error 500: busy"), times=1)
    with pytest.raises(BackendError, match="answer lost"):
        await manager.snapshot(lease)
    assert any(left.startswith("image") for left in await leftovers(backend, manager.config.namespace))
    await manager.check_health()  # retries the removal
    assert not any(left.startswith("image") for left in await leftovers(backend, manager.config.namespace))


async def test_close_removes_the_image_of_a_failed_snapshot(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_faulty(health_interval_s=None)
    lease = await manager.acquire("p", base_spec)
    faults.fail("commit", BackendError("Docker Engine error 500: answer lost"), after=True, times=1)
    faults.fail("remove_image", BackendError("Docker Engine error 500: busy"), times=1)
    with pytest.raises(BackendError, match="answer lost"):
        await manager.snapshot(lease)
    await manager.close()
    assert await leftovers(backend, manager.config.namespace) == []


async def test_a_hung_engine_does_not_block_a_failed_acquire_forever(
    make_faulty: Factory, faults: FaultyBackend, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    # Found by the chaos benchmark: the removal of a half-started sandbox had no time limit, so a
    # cancelled or failed acquire (and close() after it) waited on a hung engine forever.
    manager = await make_faulty(health_interval_s=None, engine_timeout_s=1.0)
    faults.fail("create", BackendError("Docker Engine error 500: answer lost"), after=True, times=1)
    faults.hang("destroy", times=1)
    async with asyncio.timeout(60):  # a guard against hanging forever, not a speed check
        with pytest.raises(BackendError, match="answer lost"):
            await manager.acquire("p", base_spec)
    await manager.check_health()  # the engine answers again: the removal is retried
    assert await leftovers(backend, manager.config.namespace) == []
