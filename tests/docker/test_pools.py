"""Warm pools and preparation ahead of use, on the real engine."""

from __future__ import annotations

import asyncio
import collections

import pytest

from thunder_env import EnvManager, ImageNotFoundError, SandboxSpec
from thunder_env.docker import DockerBackend

from ._helpers import containers_labelled, eventually, with_setup
from .conftest import ManagerFactory


async def warm_ids(backend: DockerBackend, manager: EnvManager) -> list[str]:
    return await containers_labelled(backend, thunder__namespace=manager.config.namespace, thunder__program="pool")


async def test_concurrent_acquires_get_distinct_sandboxes(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    await manager.provisioner.configure_pool(base_spec, min_size=20, max_size=20)
    await manager.provisioner.wait_for_pool(base_spec, timeout_s=120)
    warm_before = set(await warm_ids(backend, manager))
    assert len(warm_before) == 20

    leases = await asyncio.gather(*(manager.acquire(f"p{i}", base_spec) for i in range(50)))
    ids = [lease.sandbox_id for lease in leases]
    assert len(set(ids)) == 50  # never the same sandbox twice
    origins = collections.Counter(manager.sandbox_info(lease).origin for lease in leases)
    assert origins == {"warm": 20, "cold": 30}  # the pool ran dry: the rest started cold, none failed
    assert {lease.sandbox_id for lease in leases if manager.sandbox_info(lease).origin == "warm"} == warm_before
    running = await asyncio.gather(*(backend.is_running(sandbox_id) for sandbox_id in ids))
    assert all(running)
    (pool,) = manager.provisioner.pools()
    assert (pool.hits, pool.misses) == (20, 30)


async def test_empty_pool_falls_back_to_a_cold_start(manager: EnvManager, base_spec: SandboxSpec) -> None:
    await manager.provisioner.configure_pool(base_spec, min_size=1, max_size=1)
    await manager.provisioner.wait_for_pool(base_spec, timeout_s=60)
    leases = await asyncio.gather(*(manager.acquire("p", base_spec) for _ in range(3)))
    assert sorted(manager.sandbox_info(lease).origin for lease in leases) == ["cold", "cold", "warm"]
    for lease in leases:
        assert (await manager.exec(lease, "echo ok")).stdout.text == "ok\n"


async def test_pool_refills_after_use(manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec) -> None:
    await manager.provisioner.configure_pool(base_spec, min_size=2, max_size=2)
    await manager.provisioner.wait_for_pool(base_spec, timeout_s=60)
    taken = [await manager.acquire("p", base_spec) for _ in range(2)]
    assert {manager.sandbox_info(lease).origin for lease in taken} == {"warm"}
    info = await manager.provisioner.wait_for_pool(base_spec, at_least=2, timeout_s=60)
    assert info.warm == 2
    refilled = set(await warm_ids(backend, manager)) - {lease.sandbox_id for lease in taken}
    assert len(refilled) == 2  # new warm sandboxes, not the handed-out ones
    # Handed-out sandboxes keep their 'pool' label (labels are immutable); the manager knows the owner.
    assert manager.sandboxes("p") and {s.sandbox_id for s in manager.sandboxes("p")} == {t.sandbox_id for t in taken}


async def test_dead_warm_sandbox_is_not_handed_out(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    await manager.provisioner.configure_pool(base_spec, min_size=2, max_size=2)
    await manager.provisioner.wait_for_pool(base_spec, timeout_s=60)
    killed = await warm_ids(backend, manager)
    for sandbox_id in killed:
        await backend.client.containers.container(f"thunder-{sandbox_id}").kill()

    lease = await manager.acquire("p", base_spec)
    assert lease.sandbox_id not in killed
    assert manager.sandbox_info(lease).origin == "cold"
    assert (await manager.exec(lease, "echo alive")).ok
    (pool,) = manager.provisioner.pools()
    assert pool.discarded_dead == 2

    async def killed_are_removed() -> bool:
        return not set(killed) & set(await warm_ids(backend, manager))

    await eventually(killed_are_removed, what="dead warm sandboxes are removed from the engine")


async def test_pool_size_follows_demand(
    make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    # Automatic pools: every spec acquired gets one, sized by its recent acquire rate.
    manager = await make_manager(pool_min_size=0, pool_max_size=3, pool_demand_window_s=3.0)
    assert manager.provisioner.pools() == []
    leases = [await manager.acquire("p", base_spec) for _ in range(6)]
    (pool,) = manager.provisioner.pools()
    assert pool.target >= 1

    async def warmed() -> bool:
        return len(await warm_ids(backend, manager)) >= 1

    await eventually(warmed, what="the pool fills up after demand")
    for lease in leases:
        await manager.release(lease)

    async def shrunk() -> bool:
        return manager.provisioner.pools()[0].target == 0 and await warm_ids(backend, manager) == []

    await eventually(shrunk, timeout_s=20, what="the pool empties once demand stops")


async def test_configure_pool_rejects_bad_sizes(manager: EnvManager, base_spec: SandboxSpec) -> None:
    with pytest.raises(ValueError, match="min_size <= max_size"):
        await manager.provisioner.configure_pool(base_spec, min_size=3, max_size=1)


# --------------------------------------------------------------------- prepare


async def test_prepared_environment_is_taken_by_the_acquire(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    await manager.provisioner.prepare("p", base_spec)
    await manager.provisioner.prepare("p", base_spec)  # idempotent: one environment per program and spec
    assert manager.sandboxes("p") == []  # returned before the sandbox exists or is handed over

    async def started() -> bool:
        return len(await containers_labelled(backend, thunder__namespace=manager.config.namespace)) == 1

    await eventually(started, what="the prepared sandbox starts in the background")
    (prepared_id,) = await containers_labelled(backend, thunder__namespace=manager.config.namespace)

    async def ready() -> bool:
        return manager.provisioner.is_prepared("p", base_spec)

    await eventually(ready, what="the prepared sandbox is ready")
    assert not manager.provisioner.is_prepared("q", base_spec)
    lease = await manager.acquire("p", base_spec)
    assert lease.sandbox_id == prepared_id
    assert manager.sandbox_info(lease).origin == "prepared"
    stats = manager.provisioner.preparation_stats()
    assert (stats.requested, stats.ready_at_acquire, stats.waited_at_acquire) == (1, 1, 0)
    # Another program's acquire does not take it (it was taken anyway), and gets its own.
    other = await manager.acquire("q", base_spec)
    assert manager.sandbox_info(other).origin == "cold"


async def test_acquire_right_after_prepare_waits_for_it(manager: EnvManager, base_spec: SandboxSpec) -> None:
    spec = with_setup(base_spec, "echo prepared >> /etc/log")
    await manager.provisioner.prepare("p", spec)
    lease = await manager.acquire("p", spec)
    assert manager.sandbox_info(lease).origin == "prepared"
    assert (await manager.exec(lease, "cat /etc/log")).stdout.text == "prepared\n"
    stats = manager.provisioner.preparation_stats()
    assert (stats.ready_at_acquire, stats.waited_at_acquire) == (0, 1)


async def test_unclaimed_preparations_are_reclaimed(
    make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_manager(prepare_ttl_s=1.0)
    namespace = manager.config.namespace

    async def count() -> int:
        return len(await containers_labelled(backend, thunder__namespace=namespace))

    async def one() -> bool:
        return await count() == 1

    async def none() -> bool:
        return await count() == 0

    await manager.provisioner.prepare("ends", base_spec)
    await eventually(one, what="prepared")
    await manager.end_program("ends")
    assert await count() == 0  # gone with its program

    await manager.provisioner.prepare("forgets", base_spec)
    await eventually(one, what="prepared")
    await eventually(none, timeout_s=10, what="expired after prepare_ttl_s")
    assert manager.provisioner.preparation_stats().expired == 1


async def test_failed_preparation_falls_back_to_the_acquire_path(manager: EnvManager) -> None:
    missing = SandboxSpec(image="thunder/does-not-exist:latest")
    await manager.provisioner.prepare("p", missing)  # returns at once: the failure shows at acquire time
    with pytest.raises(ImageNotFoundError):
        await manager.acquire("p", missing)
    assert manager.provisioner.preparation_stats().failed == 1
