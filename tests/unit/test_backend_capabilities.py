"""The backend seam's optional capabilities: declared by the backend, checked once by the manager, and a
call that needs a missing one answered with a typed error that names it (nothing started, nothing leaked)."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator

import pytest

from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.backend import Capability
from thunder_env.capabilities import BackendDeclarationError, MissingCapabilityError

from ..fakes import MemoryBackend

SPEC = SandboxSpec(image="fake/image:1")
NO_DISK_LIMITS = {"sandbox_disk_limit_bytes": None, "disk_budget_bytes": None}


def config(**fields: object) -> ManagerConfig:
    return ManagerConfig(namespace="unit-caps", min_free_memory_bytes=0, health_interval_s=None, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def bare() -> AsyncIterator[tuple[MemoryBackend, EnvManager]]:
    """A backend with the required seam only (it has every method: the declaration is what counts)."""
    backend = MemoryBackend(capabilities=frozenset())
    manager = EnvManager(backend, config(**NO_DISK_LIMITS))
    await manager.start()
    yield backend, manager
    await manager.close()
    assert not backend.live and not backend.images


async def test_snapshot_on_a_backend_without_snapshots_is_a_typed_error(bare: tuple[MemoryBackend, EnvManager]) -> None:
    backend, manager = bare
    lease = await manager.acquire("p1", SPEC)
    with pytest.raises(MissingCapabilityError, match="MemoryBackend backend has no snapshots capability") as caught:
        await manager.snapshot(lease)
    assert caught.value.capability is Capability.SNAPSHOTS
    assert backend.images == {}  # the backend's commit was never called
    assert manager.provisioner.snapshots() == []
    assert (await manager.exec(lease, "true")).ok  # the sandbox is untouched


async def test_setup_steps_need_snapshots_and_start_nothing_without_them(
    bare: tuple[MemoryBackend, EnvManager],
) -> None:
    backend, manager = bare
    with pytest.raises(MissingCapabilityError, match="setup steps") as caught:
        await manager.acquire("p1", SandboxSpec(image="fake/image:1", setup=("echo built",)))
    assert caught.value.capability is Capability.SNAPSHOTS
    assert backend.created == 0 and backend.execs == []


async def test_disk_accounting_missing(bare: tuple[MemoryBackend, EnvManager]) -> None:
    backend, manager = bare
    with pytest.raises(MissingCapabilityError) as caught:
        await manager.provisioner.disk_usage()
    assert caught.value.capability is Capability.DISK_ACCOUNTING
    # A per-sandbox disk limit nobody can measure is refused before anything starts.
    with pytest.raises(MissingCapabilityError, match="disk_bytes"):
        await manager.acquire("p1", SandboxSpec(image="fake/image:1", disk_bytes=1 << 30))
    assert backend.created == 0


def test_disk_limits_in_the_config_need_disk_accounting() -> None:
    backend = MemoryBackend(capabilities=frozenset({Capability.SNAPSHOTS}))
    with pytest.raises(MissingCapabilityError, match="sandbox_disk_limit_bytes and disk_budget_bytes"):
        EnvManager(backend, config())
    EnvManager(backend, config(**NO_DISK_LIMITS))  # no limits asked: fine


def test_a_declared_capability_the_backend_does_not_implement_is_refused() -> None:
    backend = types.SimpleNamespace(capabilities=frozenset({Capability.HOST_AGENT}))
    with pytest.raises(BackendDeclarationError, match="host_agent capability but does not implement HostLocalAgent"):
        EnvManager(backend, config(**NO_DISK_LIMITS))  # type: ignore[arg-type]
    with pytest.raises(BackendDeclarationError, match="declares no capabilities"):
        EnvManager(types.SimpleNamespace(), config(**NO_DISK_LIMITS))  # type: ignore[arg-type]


async def test_reconcile_cleans_host_directories_only_for_a_backend_declaring_a_host_agent() -> None:
    for capabilities, calls in ((frozenset(), []), (frozenset({Capability.HOST_AGENT}), ["unit-caps"])):
        backend = MemoryBackend(capabilities=capabilities)
        async with EnvManager(backend, config(**NO_DISK_LIMITS)):
            pass
        assert backend.orphan_dir_calls == calls


async def test_snapshots_declared_work_through_the_same_manager() -> None:
    backend = MemoryBackend()  # snapshots and disk accounting
    async with EnvManager(backend, config()) as manager:
        lease = await manager.acquire("p1", SPEC)
        snapshot = await manager.snapshot(lease)
        assert snapshot.image_id in backend.images
        forks = await manager.fork("p2", snapshot.snapshot_id, n=2)
        assert len({fork.sandbox_id for fork in forks}) == 2
        await manager.end_program("p2")
        await manager.end_program("p1")
    assert not backend.live and not backend.images  # the snapshot went with its last holder
