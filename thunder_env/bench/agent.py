"""Agent: cold acquire with and without the exec agent, interleaved, and the exec round trip.

On a shared machine two separate runs see different load, so this run alternates: each pair acquires
one sandbox with the agent and one without (the order flips every pair), under the same concurrency.
Then one sandbox runs commands one at a time through the manager (the agent) and straight through the
Engine API (create, start, read, inspect), in alternating blocks of 10.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time

from .. import EnvManager, ManagerConfig, SandboxSpec
from ..backend_config import DockerBackendConfig
from ..docker import DockerBackend
from .core import _round_trips
from .stats import count_entries, p50_ms, p95_ms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=60, help="acquire pairs (20 with --quick)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=300, help="exec round trips (60 with --quick)")
    parser.add_argument("--image", default="thunder/base:latest")


async def run(args: argparse.Namespace) -> dict[str, object]:
    pairs = 20 if args.quick else args.pairs
    rounds = 60 if args.quick else args.rounds
    spec = SandboxSpec(image=args.image, memory_bytes=128 << 20, pids_limit=64)
    run_id = secrets.token_hex(4)
    acquire_s: dict[bool, list[float]] = {True: [], False: []}
    limit = asyncio.Semaphore(args.concurrency)
    # The Docker backend itself: the agent against the Engine API is what this bench measures.
    with_agent = DockerBackend.from_config(DockerBackendConfig(exec_agent=True))
    without = DockerBackend.from_config(DockerBackendConfig(exec_agent=False))
    async with with_agent, without:
        managers = {
            True: EnvManager(with_agent, ManagerConfig(namespace=f"bench-agent-{run_id}", idle_ttl_s=None)),
            False: EnvManager(without, ManagerConfig(namespace=f"bench-noagent-{run_id}", idle_ttl_s=None)),
        }
        for manager in managers.values():
            await manager.start()

        async def pair(index: int) -> None:
            async with limit:
                for agent in (True, False) if index % 2 else (False, True):
                    started = time.perf_counter()
                    await managers[agent].acquire(f"pair-{index}", spec)
                    acquire_s[agent].append(time.perf_counter() - started)
                    await managers[agent].end_program(f"pair-{index}")

        await asyncio.gather(*(pair(i) for i in range(pairs)))

        exec_s, raw_s = await _round_trips(managers[True], with_agent, spec, rounds)

        leaked = 0
        for manager in managers.values():
            leaked += len(manager.sandboxes())
            await manager.close()
            namespace = manager.config.namespace
            leaked += len(await with_agent.list_managed({"thunder.namespace": namespace}))
            leaked += await asyncio.to_thread(count_entries, with_agent.agent_run_dir / namespace)
        agent_execs, fallback_execs = with_agent.agent_execs, with_agent.fallback_execs

    agent_acquire, plain_acquire = p50_ms(acquire_s[True]), p50_ms(acquire_s[False])
    agent_p50, raw_p50 = p50_ms(exec_s), p50_ms(raw_s)
    print(
        f"agent: acquire p50 {agent_acquire} ms with the agent, {plain_acquire} ms without "
        f"(means {statistics.mean(acquire_s[True]) * 1000:.1f} / {statistics.mean(acquire_s[False]) * 1000:.1f}); "
        f"exec p95 {p95_ms(exec_s)} ms, raw p95 {p95_ms(raw_s)} ms",
        file=sys.stderr,
    )
    return {
        "benchmark": "agent",
        "pairs": pairs,
        "concurrency": args.concurrency,
        "cold_acquire_ms_p50_agent": agent_acquire,
        "cold_acquire_ms_p50_no_agent": plain_acquire,
        "cold_acquire_ratio": round(agent_acquire / plain_acquire, 3),
        "rounds": rounds,
        "agent_exec_ms_p50": agent_p50,
        "agent_exec_ms_p95": p95_ms(exec_s),
        "raw_docker_exec_ms_p50": raw_p50,
        "agent_speedup": round(raw_p50 / agent_p50, 1),
        "agent_execs": agent_execs,
        "fallback_execs": fallback_execs,
        "leaked": leaked,
    }
