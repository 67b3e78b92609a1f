"""The manager the chaos benchmark SIGKILLs: it starts sandboxes, reports them, then keeps working.

``python -m thunder_env.bench.chaos_worker NAMESPACE IMAGE COUNT`` prints one JSON line (its instance
id, sandbox ids, exposed host ports, snapshot ids) once COUNT sandboxes run, then acquires, runs
commands and releases in a loop until it is killed: the kill lands mid-work.
"""

from __future__ import annotations

import asyncio
import json
import sys

from .. import EnvManager, ManagerConfig, SandboxSpec
from ..backend_factory import open_backend


async def work(namespace: str, image: str, count: int) -> None:
    config = ManagerConfig(namespace=namespace, idle_ttl_s=None, reconcile_on_start=False)
    async with open_backend() as backend:
        manager = EnvManager(backend, config)
        await manager.start()
        sandboxes: list[str] = []
        ports: list[int] = []
        snapshots: list[str] = []
        for index in range(count):
            network = "internal" if index % 2 == 0 else "none"
            spec = SandboxSpec(image=image, memory_bytes=128 << 20, pids_limit=64, network=network)
            lease = await manager.acquire(f"worker-{index}", spec)
            sandboxes.append(lease.sandbox_id)
            await manager.exec(lease, "echo started > /tmp/mark")
            if network == "internal":
                ports.append((await manager.expose_port(lease, 8080)).host_port)
            if index == 0:
                snapshots.append((await manager.snapshot(lease)).snapshot_id)
        report = {"instance": manager.instance_id, "sandboxes": sandboxes, "ports": ports, "snapshots": snapshots}
        print(json.dumps(report), flush=True)
        spec = SandboxSpec(image=image, memory_bytes=128 << 20, pids_limit=64)
        round_ = 0
        while True:  # mid-work until the SIGKILL: an acquire, a command or a destroy is in flight
            round_ += 1
            lease = await manager.acquire(f"loop-{round_}", spec)
            await manager.exec(lease, "sleep 0.2; echo busy")
            await manager.end_program(f"loop-{round_}")


def main() -> None:
    namespace, image, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(work(namespace, image, count))


if __name__ == "__main__":
    main()
