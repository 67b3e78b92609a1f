"""Snapshots and forks on the real engine: isolation, reference counting, the disk budget, accounting."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest

from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend
from thunder_env.hostcheck import DiskReserveError
from thunder_env.snapshots import DiskBudgetExceededError, SnapshotNotFoundError

from ._helpers import crash_after_first_line, image_exists, with_setup
from .conftest import BASE_IMAGE, ManagerFactory, leftovers

MB = 1 << 20


async def cat(manager: EnvManager, lease: object, path: str) -> str:
    result = await manager.exec(lease, f"cat {path} 2>/dev/null || echo MISSING")  # type: ignore[arg-type]
    return result.stdout.text.strip()


async def test_forks_are_isolated(manager: EnvManager, base_spec: SandboxSpec) -> None:
    source = await manager.acquire("p", base_spec)
    await manager.write_file(source, "shared.txt", b"base")
    snap = await manager.snapshot(source)
    await manager.write_file(source, "after.txt", b"later")  # after the snapshot: not in it

    forks = await manager.fork("q", snap.snapshot_id, 3)
    assert len({lease.sandbox_id for lease in forks} | {source.sandbox_id}) == 4
    assert {manager.sandbox_info(lease).origin for lease in forks} == {"fork"}
    await manager.write_file(forks[0], "shared.txt", b"changed")
    await manager.write_file(forks[0], "mine.txt", b"mine")

    assert await cat(manager, forks[0], "shared.txt") == "changed"
    for other in forks[1:]:
        assert await cat(manager, other, "shared.txt") == "base"
        assert await cat(manager, other, "mine.txt") == "MISSING"
        assert await cat(manager, other, "after.txt") == "MISSING"
    # The snapshot itself is untouched: a new fork sees what was captured, nothing later.
    (fresh,) = await manager.fork("r", snap.snapshot_id, 1)
    assert await cat(manager, fresh, "shared.txt") == "base"
    assert await cat(manager, fresh, "mine.txt") == "MISSING"
    # And the source never sees its forks' writes.
    assert await cat(manager, source, "shared.txt") == "base"
    assert await cat(manager, source, "mine.txt") == "MISSING"
    # A snapshot of a fork is a layer on the first one.
    child = await manager.snapshot(forks[0])
    assert child.parent_snapshot_id == snap.snapshot_id
    (grandchild,) = await manager.fork("r", child.snapshot_id, 1)
    assert await cat(manager, grandchild, "mine.txt") == "mine"


async def test_gc_keeps_referenced_snapshots_and_removes_the_rest(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    source = await manager.acquire("p", base_spec)
    await manager.write_file(source, "one.txt", b"1")
    kept = await manager.snapshot(source)
    await manager.write_file(source, "two.txt", b"2")
    dropped = await manager.snapshot(source)
    assert set(kept.holders) == {"program:p"}
    forks = await manager.fork("q", kept.snapshot_id, 2)

    await manager.provisioner.release_snapshot("p", kept.snapshot_id)
    await manager.provisioner.release_snapshot("p", dropped.snapshot_id)
    # Unreferenced: gone at once. Referenced by the forks' sandboxes: kept.
    assert not await image_exists(backend, dropped.image_id)
    assert await image_exists(backend, kept.image_id)
    assert [s.snapshot_id for s in manager.provisioner.snapshots()] == [kept.snapshot_id]
    with pytest.raises(SnapshotNotFoundError):
        await manager.fork("q", dropped.snapshot_id, 1)

    await manager.release(forks[0])
    assert await image_exists(backend, kept.image_id)
    await manager.release(forks[1])  # the last reference
    assert not await image_exists(backend, kept.image_id)
    assert manager.provisioner.snapshots() == []


async def test_holds_and_program_end(manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec) -> None:
    source = await manager.acquire("p", base_spec)
    snap = await manager.snapshot(source)
    manager.provisioner.hold_snapshot("keeper", snap.snapshot_id)
    await manager.end_program("p")  # drops p's hold (and its sandbox); keeper still holds
    assert await image_exists(backend, snap.image_id)
    await manager.end_program("keeper")
    assert not await image_exists(backend, snap.image_id)
    with pytest.raises(SnapshotNotFoundError):
        manager.provisioner.hold_snapshot("late", snap.snapshot_id)


async def test_fork_of_all_or_nothing(manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec) -> None:
    source = await manager.acquire("p", base_spec)
    snap = await manager.snapshot(source)
    with pytest.raises(ValueError, match="n must be"):
        await manager.fork("p", snap.snapshot_id, 0)
    # Cancelled half-way: every fork already started is removed, the snapshot is intact.
    task = asyncio.create_task(manager.fork("q", snap.snapshot_id, 40))  # takes seconds: 4 start at a time
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.sandbox_id for s in manager.sandboxes()] == [source.sandbox_id]
    assert await leftovers(backend, manager.config.namespace) != []  # the source and the snapshot remain
    assert manager.provisioner.snapshots()[0].holders == ("program:p",)
    names = await backend.client.containers.list(
        all=True, filters={"label": [f"thunder.namespace={manager.config.namespace}"]}
    )
    assert len(names) == 1


async def test_disk_accounting(manager: EnvManager, base_spec: SandboxSpec) -> None:
    source = await manager.acquire("p", base_spec)
    await manager.exec(source, "head -c 2097152 /dev/urandom > /workspace/two-mb")
    snap = await manager.snapshot(source)
    forks = await manager.fork("q", snap.snapshot_id, 2)
    await manager.exec(forks[0], "head -c 1048576 /dev/urandom > /workspace/one-mb")

    report = await manager.provisioner.disk_usage(max_age_s=0)
    sandboxes = {u.resource_id: u for u in report.sandboxes}
    (snapshot_usage,) = report.snapshots
    assert snapshot_usage.unique_bytes >= 2 * MB  # its own layer
    assert snapshot_usage.shared_bytes > 0  # the base image under it
    assert sandboxes[source.sandbox_id].unique_bytes >= 2 * MB
    assert MB <= sandboxes[forks[0].sandbox_id].unique_bytes < 2 * MB  # only its own write
    assert sandboxes[forks[1].sandbox_id].unique_bytes < 64 << 10  # wrote nothing: shares everything
    assert sandboxes[forks[1].sandbox_id].shared_bytes >= snapshot_usage.unique_bytes + snapshot_usage.shared_bytes
    assert report.programs["p"] == sandboxes[source.sandbox_id].unique_bytes + snapshot_usage.unique_bytes
    assert report.programs["q"] == sum(sandboxes[f.sandbox_id].unique_bytes for f in forks)
    everything = sum(u.unique_bytes for u in report.sandboxes) + snapshot_usage.unique_bytes
    assert report.managed_bytes == everything
    assert report.engine_bytes >= report.managed_bytes


async def test_disk_budget_is_enforced(
    make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_manager(disk_budget_bytes=3 * MB)
    first = with_setup(base_spec, "head -c 2097152 /dev/urandom > /etc/first")
    second = with_setup(base_spec, "head -c 2097152 /dev/urandom > /etc/second")

    await manager.release(await manager.acquire("p", first))
    (cached,) = manager.provisioner.snapshots()  # no sandbox left, but the template is cached: 2 MB < 3 MB
    lease = await manager.acquire("p", second)  # 4 MB of templates > 3 MB: the older cached one goes
    await manager.provisioner.collect_snapshots()
    assert not await image_exists(backend, cached.image_id)
    assert [s.kind for s in manager.provisioner.snapshots()] == ["template"]
    assert manager.provisioner.snapshots()[0].snapshot_id != cached.snapshot_id

    # Everything left is in use and over budget: new snapshots are refused, with the figures.
    await manager.exec(lease, "head -c 2097152 /dev/urandom > /workspace/more")
    with pytest.raises(DiskBudgetExceededError, match="over the disk budget of 3 MiB"):
        await manager.snapshot(lease)
    # The evicted template is rebuilt on its next use.
    again = await manager.acquire("p", first)
    assert (await manager.exec(again, "test -s /etc/first")).ok
    assert manager.provisioner.template_builds() == 3


async def test_snapshots_and_template_builds_are_refused_below_the_disk_reserve(
    make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_manager(snapshot_reserve_bytes=1 << 60)  # more than any disk has free
    lease = await manager.acquire("p", base_spec)  # sandboxes keep their own reserve (min_free_disk_bytes)
    with pytest.raises(DiskReserveError, match=r"refusing a snapshot: only \d+ MiB free under /"):
        await manager.snapshot(lease)
    with pytest.raises(DiskReserveError, match="refusing a template build"):
        await manager.acquire("p", with_setup(base_spec, "touch /etc/built"))
    assert manager.provisioner.snapshots() == [] and manager.provisioner.template_builds() == 0
    assert len(await leftovers(backend, manager.config.namespace)) == 1  # the one sandbox, no image
    assert (await manager.exec(lease, "true")).ok


CRASHER = """
import asyncio, json, sys
from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend

async def main():
    manager = EnvManager(DockerBackend(), ManagerConfig(namespace=sys.argv[1]))
    await manager.start()
    spec = SandboxSpec(image=sys.argv[2])
    lease = await manager.acquire("crashy", spec)
    snap = await manager.snapshot(lease)
    await manager.fork("crashy", snap.snapshot_id, 1)
    await manager.acquire("crashy", spec.model_copy(update={"setup": ("touch /etc/t",)}))
    await manager.provisioner.configure_pool(spec, min_size=1, max_size=1)
    await manager.provisioner.wait_for_pool(spec)
    print(json.dumps(len(manager.provisioner.snapshots())), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_reconcile_removes_snapshots_and_warm_sandboxes_of_a_crashed_manager(backend: DockerBackend) -> None:
    namespace = "test-crash-" + secrets.token_hex(4)
    assert json.loads(await crash_after_first_line(CRASHER, namespace, BASE_IMAGE)) == 2
    left = await leftovers(backend, namespace)
    assert sum(1 for item in left if item.startswith("image")) == 2
    assert sum(1 for item in left if item.startswith("container")) == 4  # source, fork, template one, warm
    async with EnvManager(backend, ManagerConfig(namespace=namespace)):
        assert await leftovers(backend, namespace) == []


async def test_concurrent_disk_usage_queries_wait_for_each_other(backend: DockerBackend) -> None:
    # dockerd runs one /system/df at a time and answers a concurrent one with a 500: several managers on
    # one engine (or an operator's `docker system df`) must not make disk accounting fail.
    results = await asyncio.gather(*(backend.disk_usage() for _ in range(6)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
