"""Core: cold acquire and exec round trip through the manager vs the Docker Engine API straight.

N programs acquire a sandbox, run a few commands and end; some end abruptly with a command still
running. Every manager exec is paired with the same command run straight through aiodocker
(create, start, read, inspect) on the same container, so both see the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import time

import aiodocker

from .. import EnvManager, ManagerConfig, SandboxSpec
from ..docker import DockerBackend
from ..docker.lifecycle import container_name
from .stats import p50_ms, p95_ms

COMMANDS = ("echo hello", "cat /etc/passwd", "ls /")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--image", default="thunder/base:latest")
    parser.add_argument("--abrupt-share", type=float, default=0.1, help="share of programs that end mid-command")
    parser.add_argument("--seed", type=int, default=7)


async def raw_exec(docker: aiodocker.Docker, container: str, command: str) -> bytes:
    """The baseline: one exec straight through the Engine API, as a client without Thunder does it."""
    execution = await docker.containers.container(container).exec(["/bin/sh", "-c", command])
    out = bytearray()
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            out += message.data
    await execution.inspect()
    return bytes(out)


async def run(args: argparse.Namespace) -> dict[str, object]:
    programs = 20 if args.quick else args.programs
    rng = random.Random(args.seed)
    namespace = "bench-core-" + secrets.token_hex(4)
    spec = SandboxSpec(image=args.image, memory_bytes=128 << 20, pids_limit=64)
    acquire_s: list[float] = []
    exec_s: list[float] = []
    raw_s: list[float] = []
    abrupt = 0
    limit = asyncio.Semaphore(args.concurrency)

    async with DockerBackend() as backend:
        manager = EnvManager(backend, ManagerConfig(namespace=namespace, idle_ttl_s=None))
        await manager.start()

        async def program(index: int) -> None:
            nonlocal abrupt
            program_id = f"bench-{index}"
            async with limit:
                started = time.perf_counter()
                lease = await manager.acquire(program_id, spec)
                acquire_s.append(time.perf_counter() - started)
                container = container_name(lease.sandbox_id)
                for command in COMMANDS:
                    started = time.perf_counter()
                    result = await manager.exec(lease, command)
                    exec_s.append(time.perf_counter() - started)
                    assert result.exit_code == 0, result
                    started = time.perf_counter()
                    await raw_exec(backend.client, container, command)
                    raw_s.append(time.perf_counter() - started)
                if rng.random() < args.abrupt_share:
                    # The agent dies mid-command: its program ends with the command still running.
                    abrupt += 1
                    pending = asyncio.create_task(manager.exec(lease, "sleep 300"))
                    await asyncio.sleep(0.05)
                    await manager.end_program(program_id)
                    pending.cancel()
                    await asyncio.gather(pending, return_exceptions=True)
                else:
                    await manager.end_program(program_id)

        started = time.perf_counter()
        await asyncio.gather(*(program(i) for i in range(programs)))
        wall = time.perf_counter() - started
        left_sandboxes = len(manager.sandboxes())
        left_leases = sum(len(manager.leases_of(p)) for p in manager.programs())
        await manager.close()
        left_engine = await backend.list_managed({"thunder.namespace": namespace})
        print(
            f"core: {programs} programs in {wall:.1f} s; acquire p95 {p95_ms(acquire_s)} ms; "
            f"exec p95 {p95_ms(exec_s)} ms; raw p95 {p95_ms(raw_s)} ms",
            file=sys.stderr,
        )
    exec_p50 = p50_ms(exec_s)
    raw_p50 = p50_ms(raw_s)
    return {
        "benchmark": "core",
        "programs": programs,
        "abrupt_endings": abrupt,
        "concurrency": args.concurrency,
        "cold_acquire_ms_p50": p50_ms(acquire_s),
        "exec_ms_p50": exec_p50,
        "raw_docker_exec_ms_p50": raw_p50,
        "exec_overhead_ratio": round(exec_p50 / raw_p50, 3),
        "leaked": len(left_engine) + left_sandboxes + left_leases,
        "wall_s": round(wall, 1),
    }
