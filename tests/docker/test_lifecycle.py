"""Leases, sharing, reference counts and reclamation against the real Docker Engine."""

from __future__ import annotations

import asyncio

import pytest

from thunder_env import (
    EnvManager,
    ImageNotFoundError,
    LeaseReleasedError,
    ResourceExhaustedError,
    SandboxNotFoundError,
    SandboxSpec,
)
from thunder_env.docker import DockerBackend


async def test_acquire_creates_hardened_labelled_container_and_release_removes_it(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    lease = await manager.acquire("prog-a", base_spec)
    info = await backend.client.containers.container("thunder-" + lease.sandbox_id).show()
    assert info["State"]["Running"]
    labels = info["Config"]["Labels"]
    assert labels["thunder.program"] == "prog-a" and labels["thunder.namespace"] == manager.config.namespace
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"] and host["PidsLimit"] == 128
    assert "no-new-privileges" in host["SecurityOpt"]
    await manager.release(lease)
    assert not await backend.is_running(lease.sandbox_id)
    assert manager.sandboxes() == []


async def test_shared_sandbox_survives_until_last_program_ends(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    first = await manager.acquire("prog-a", base_spec)
    second = await manager.share("prog-b", first.sandbox_id)
    await manager.exec(first, "echo shared > /tmp/f")
    assert await manager.end_program("prog-a") == 0
    assert await backend.is_running(first.sandbox_id)
    with pytest.raises(LeaseReleasedError, match="program prog-a ended"):
        await manager.exec(first, "true")
    assert (await manager.exec(second, "cat /tmp/f")).stdout.text == "shared\n"
    assert await manager.end_program("prog-b") == 1
    assert not await backend.is_running(first.sandbox_id)


async def test_end_program_reclaims_all_of_its_sandboxes(manager: EnvManager, base_spec: SandboxSpec) -> None:
    leases = await asyncio.gather(*(manager.acquire("prog-many", base_spec) for _ in range(3)))
    other = await manager.acquire("prog-other", base_spec)
    assert len({lease.sandbox_id for lease in leases}) == 3
    assert await manager.end_program("prog-many") == 3
    assert [info.sandbox_id for info in manager.sandboxes()] == [other.sandbox_id]
    assert await manager.end_program("prog-many") == 0  # idempotent


async def test_errors_are_typed_and_change_nothing(manager: EnvManager, base_spec: SandboxSpec) -> None:
    with pytest.raises(SandboxNotFoundError, match="sb-nope"):
        await manager.share("prog-a", "sb-nope")
    with pytest.raises(ImageNotFoundError, match="thunder/absent"):
        await manager.acquire("prog-a", SandboxSpec(image="thunder/absent:latest"))
    lease = await manager.acquire("prog-a", base_spec)
    await manager.release(lease)
    await manager.release(lease)  # releasing twice is harmless
    with pytest.raises(LeaseReleasedError, match="acquire a new lease"):
        await manager.read_file(lease, "/etc/passwd")
    assert manager.sandboxes() == []


async def test_idle_sandboxes_are_reclaimed(make_manager, backend: DockerBackend, base_spec: SandboxSpec) -> None:
    manager = await make_manager(idle_ttl_s=0.5, reaper_interval_s=0.2)
    lease = await manager.acquire("prog-idle", base_spec)
    for _ in range(50):
        if not manager.sandboxes():
            break
        await asyncio.sleep(0.1)
    assert manager.sandboxes() == []
    # The listing drops a sandbox when its destroy starts; the engine takes a moment to stop it.
    for _ in range(50):
        if not await backend.is_running(lease.sandbox_id):
            break
        await asyncio.sleep(0.1)
    assert not await backend.is_running(lease.sandbox_id)
    with pytest.raises(LeaseReleasedError, match="idle"):
        await manager.exec(lease, "true")


async def test_linger_keeps_sandbox_for_reuse_then_removes_it(
    make_manager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_manager(linger_s=1.0)
    first = await manager.acquire("prog-a", base_spec)
    await manager.release(first)
    assert await backend.is_running(first.sandbox_id)
    again = await manager.acquire("prog-b", base_spec)
    assert again.sandbox_id == first.sandbox_id
    await manager.release(again)
    await asyncio.sleep(1.6)
    assert not await backend.is_running(first.sandbox_id)


async def test_host_reserve_refuses_new_sandbox(make_manager, base_spec: SandboxSpec) -> None:
    manager = await make_manager(min_free_memory_bytes=1 << 50)
    with pytest.raises(ResourceExhaustedError, match="memory"):
        await manager.acquire("prog-a", base_spec)
    assert manager.sandboxes() == []
