"""Resource limits hold: fork bombs, memory hogs, disk hogs and log floods stay inside their sandbox."""

from __future__ import annotations

import asyncio
import os

import pytest

from thunder_env import EnvManager, LeaseReleasedError, SandboxSpec
from thunder_env.docker import DockerBackend
from thunder_env.docker.lifecycle import DEFAULT_LOG_MAX_BYTES, container_name
from thunder_env.leases import Lease

from ._helpers import containers_labelled, eventually
from .conftest import BASE_IMAGE, ManagerFactory


async def test_fork_bomb_is_stopped_by_the_pids_limit(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-bomb", SandboxSpec(image=BASE_IMAGE, pids_limit=64))
    result = await manager.exec(lease, "bomb() { bomb | bomb & }; bomb; sleep 3; ps | wc -l", timeout_s=8)
    # The sandbox never exceeds its limit, and it still answers afterwards.
    count = await manager.exec(lease, "ls -d /proc/[0-9]* | wc -l", timeout_s=30)
    assert "fork" in result.stderr.text  # the shell hit the limit: "can't fork"
    assert count.exit_code == 0 and int(count.stdout.text.strip()) <= 64
    await manager.release(lease)


async def test_out_of_memory_is_reported(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-oom", SandboxSpec(image=BASE_IMAGE, memory_bytes=32 << 20))
    # dd fills a 256 MB block buffer: it cannot fit in 32 MB.
    result = await manager.exec(lease, "dd if=/dev/zero of=/dev/null bs=256M count=1", timeout_s=60)
    assert result.exit_code == 137 and result.oom_killed
    ok = await manager.exec(lease, "echo alive")
    assert ok.stdout.text == "alive\n" and not ok.oom_killed


async def test_a_sandbox_writing_past_its_disk_limit_is_stopped_with_the_reason(
    make_manager: ManagerFactory, backend: DockerBackend
) -> None:
    # overlay2 here is not on xfs with pquota: the driver cannot limit a layer and the manager measures it.
    manager = await make_manager(sandbox_disk_limit_bytes=8 << 20, disk_check_interval_s=0.5)
    hog = await manager.acquire("prog-disk", SandboxSpec(image=BASE_IMAGE))
    calm = await manager.acquire("prog-disk", SandboxSpec(image=BASE_IMAGE, disk_bytes=64 << 20))
    await manager.exec(calm, "head -c 12582912 /dev/zero > /workspace/twelve-mib")  # 12 MiB < the 64 MiB asked
    await manager.exec(hog, "head -c 33554432 /dev/zero > /workspace/big")  # 32 MiB > 8 MiB
    assert backend.enforces_disk_limit is False  # found out at the first create, which still succeeded

    async def hog_removed() -> bool:
        return await containers_labelled(backend, thunder__sandbox=hog.sandbox_id) == []

    await eventually(hog_removed, what="the sandbox past its disk limit was removed")
    with pytest.raises(LeaseReleasedError, match=r"writable layer reached \d+ MiB, over its disk limit of 8 MiB"):
        await manager.exec(hog, "true")
    # The configured limit caps a spec's own: 64 MiB asked, 8 MiB given, so the calm one went too.
    with pytest.raises(LeaseReleasedError, match="over its disk limit of 8 MiB"):
        await eventually(lambda: _runs(manager, calm), what="the second sandbox was stopped too")


async def test_a_sandbox_under_its_disk_limit_keeps_running(make_manager: ManagerFactory) -> None:
    manager = await make_manager(sandbox_disk_limit_bytes=64 << 20, disk_check_interval_s=0.5)
    lease = await manager.acquire("prog-disk", SandboxSpec(image=BASE_IMAGE))
    await manager.exec(lease, "head -c 8388608 /dev/zero > /workspace/eight-mib")
    assert await manager.check_disk_limits() == []
    assert (await manager.exec(lease, "true")).ok


async def test_the_container_log_stays_bounded(manager: EnvManager, backend: DockerBackend) -> None:
    lease = await manager.acquire("prog-log", SandboxSpec(image=BASE_IMAGE))
    # 5 MiB of lines to the container's log through its main process' stdout: five times the limit.
    result = await manager.exec(lease, "yes 0123456789abcdef0123456789abcdef | head -c 5242880 > /proc/1/fd/1")
    assert result.ok, result.stderr.text
    info = await backend.client.containers.container(container_name(lease.sandbox_id)).show()
    await asyncio.sleep(1.0)  # the engine copies the log asynchronously
    size = os.stat(info["LogPath"]).st_size
    assert 0 < size <= DEFAULT_LOG_MAX_BYTES + (64 << 10), size


async def _runs(manager: EnvManager, lease: Lease) -> bool:
    await manager.exec(lease, "true")
    return False
