"""Crash recovery: a SIGKILLed manager's sandboxes are reclaimed by the next one, a live one's never."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys

from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend

from .conftest import BASE_IMAGE, leftovers

HOLDER = """
import asyncio, json, sys
from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend

async def main():
    backend = DockerBackend()
    manager = EnvManager(backend, ManagerConfig(namespace=sys.argv[1]))
    await manager.start()
    leases = [await manager.acquire("crashy", SandboxSpec(image=sys.argv[2])) for _ in range(2)]
    print(json.dumps([l.sandbox_id for l in leases]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _start_holder(namespace: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, namespace, BASE_IMAGE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    return proc, json.loads(line)


async def test_reconcile_removes_what_a_killed_manager_left(backend: DockerBackend) -> None:
    namespace = "test-crash-" + secrets.token_hex(4)
    proc, sandbox_ids = await _start_holder(namespace)
    try:
        # While the holder lives, a second manager of the namespace must not touch its sandboxes.
        async with EnvManager(backend, ManagerConfig(namespace=namespace)) as bystander:
            report = await bystander.reconcile()
            assert report.removed == [] and report.kept_live_owner == 2
        for sandbox_id in sandbox_ids:
            assert await backend.is_running(sandbox_id)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert len(await leftovers(backend, namespace)) == 2  # a crash leaves them behind...
    manager = EnvManager(backend, ManagerConfig(namespace=namespace))
    report = await manager.start()  # ...and the next start reclaims them
    try:
        assert report is not None and report.removed_containers == 2
        assert await leftovers(backend, namespace) == []
    finally:
        await manager.close()


async def test_other_namespaces_are_untouched(backend: DockerBackend) -> None:
    mine = "test-ns-" + secrets.token_hex(4)
    async with EnvManager(backend, ManagerConfig(namespace=mine)) as owner:
        lease = await owner.acquire("p", SandboxSpec(image=BASE_IMAGE))
        async with EnvManager(backend, ManagerConfig(namespace="test-ns-" + secrets.token_hex(4))) as other:
            await other.reconcile()
        assert await backend.is_running(lease.sandbox_id)
