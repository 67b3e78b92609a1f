"""Core: cold acquire and exec round trip through the manager vs the Docker Engine API straight.

N programs acquire a sandbox, run a few commands and end; some end abruptly with a command still
running. Every manager exec (through the sandbox's exec agent) is paired with the same command through
the manager forced onto the Engine API path and straight through aiodocker (create, start, read,
inspect) on the same container, so all three see the same load. Then, outside that acquire storm,
one sandbox runs ``--rounds`` commands one at a time, through the manager and through the Engine API
in alternating blocks: the tool-call latency an agent sees (agent_exec_ms_p50, agent_speedup). ``--no-agent`` runs
without the agent (the cold-acquire baseline).
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
from ..backend_config import DockerBackendConfig
from ..docker import DockerBackend
from ..docker.agent_support import engine_exec_only
from ..docker.lifecycle import container_name
from .stats import count_entries, p50_ms, p95_ms

COMMANDS = ("echo hello", "cat /etc/passwd", "ls /")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--image", default="thunder/base:latest")
    parser.add_argument("--abrupt-share", type=float, default=0.1, help="share of programs that end mid-command")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-agent", action="store_true", help="sandboxes without the exec agent (baseline)")
    parser.add_argument("--rounds", type=int, default=200, help="sequential exec round trips (50 with --quick)")


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
    engine_s: list[float] = []
    abrupt = 0
    limit = asyncio.Semaphore(args.concurrency)

    # The Docker backend itself (not make_backend): this bench reads its agent counters and raw client.
    async with DockerBackend.from_config(DockerBackendConfig(exec_agent=not args.no_agent)) as backend:
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
                    with engine_exec_only():
                        result = await manager.exec(lease, command)
                    engine_s.append(time.perf_counter() - started)
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
        seq_exec_s, seq_raw_s = await _round_trips(manager, backend, spec, 50 if args.quick else args.rounds)
        left_sandboxes = len(manager.sandboxes())
        left_leases = sum(len(manager.leases_of(p)) for p in manager.programs())
        await manager.close()
        left_engine = await backend.list_managed({"thunder.namespace": namespace})
        left_dirs = await asyncio.to_thread(count_entries, backend.agent_run_dir / namespace)
        print(
            f"core: {programs} programs in {wall:.1f} s; acquire p95 {p95_ms(acquire_s)} ms; "
            f"exec p95 {p95_ms(exec_s)} ms; raw p95 {p95_ms(raw_s)} ms",
            file=sys.stderr,
        )
    exec_p50 = p50_ms(exec_s)
    raw_p50 = p50_ms(raw_s)
    engine_p50 = p50_ms(engine_s)
    seq_exec_p50 = p50_ms(seq_exec_s)
    seq_raw_p50 = p50_ms(seq_raw_s)
    agent_p50 = None if args.no_agent else seq_exec_p50
    return {
        "benchmark": "core",
        "programs": programs,
        "abrupt_endings": abrupt,
        "concurrency": args.concurrency,
        "cold_acquire_ms_p50": p50_ms(acquire_s),
        "exec_ms_p50": exec_p50,
        "raw_docker_exec_ms_p50": raw_p50,
        "engine_exec_ms_p50": engine_p50,
        "agent_speedup_under_load": None if args.no_agent else round(raw_p50 / exec_p50, 1),
        # One command at a time (the latency of a tool call), Engine API paired in the same phase.
        "sequential_exec_ms_p50": seq_exec_p50,
        "agent_exec_ms_p50": agent_p50,
        "raw_docker_exec_sequential_ms_p50": seq_raw_p50,
        "agent_speedup": None if agent_p50 is None else round(seq_raw_p50 / agent_p50, 1),
        # The manager's own overhead on the Engine API path (the agent path has no Engine API call).
        "exec_overhead_ratio": round(engine_p50 / raw_p50, 3),
        "agent_execs": backend.agent_execs,
        "fallback_execs": backend.fallback_execs,
        "leaked": len(left_engine) + left_sandboxes + left_leases + left_dirs,
        "wall_s": round(wall, 1),
    }


async def _round_trips(
    manager: EnvManager, backend: DockerBackend, spec: SandboxSpec, rounds: int, block: int = 10
) -> tuple[list[float], list[float]]:
    """Commands one at a time in one sandbox: through the manager, then straight through the Engine API.

    In alternating blocks, not one by one: an Engine API exec leaves the engine busy for a while after
    it returns (shim and runc teardown), which would land on the manager's next command.
    """
    lease = await manager.acquire("bench-round-trips", spec)
    container = container_name(lease.sandbox_id)
    exec_s: list[float] = []
    raw_s: list[float] = []
    try:
        for first in range(0, rounds, block):
            for index in range(first, min(first + block, rounds)):
                started = time.perf_counter()
                result = await manager.exec(lease, COMMANDS[index % len(COMMANDS)])
                exec_s.append(time.perf_counter() - started)
                assert result.exit_code == 0, result
            for index in range(first, min(first + block, rounds)):
                started = time.perf_counter()
                await raw_exec(backend.client, container, COMMANDS[index % len(COMMANDS)])
                raw_s.append(time.perf_counter() - started)
    finally:
        await manager.end_program("bench-round-trips")
    return exec_s, raw_s
