"""Pool: cold vs warm acquire of a thunder/python template, measured in the same run.

A template (thunder/python plus one setup step) is built once, untimed. Cold: acquires with no pool,
each starting a sandbox from the template's snapshot. Warm: the same acquires served by a prewarmed
pool, refilling in the background as they go. Both are timed around ``EnvManager.acquire`` alone.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from .. import EnvManager, ManagerConfig, SandboxSpec
from ..backend_factory import open_backend
from .stats import p50_ms, p95_ms

SETUP = ("python3 -c 'import json, sqlite3, venv' && echo ready > /etc/thunder-template-ready",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--acquires", type=int, default=30, help="acquires per mode (cold, warm)")
    parser.add_argument("--image", default="thunder/python:latest")
    parser.add_argument("--refill-concurrency", type=int, default=2)


async def run(args: argparse.Namespace) -> dict[str, object]:
    count = 8 if args.quick else args.acquires
    namespace = "bench-pool-" + secrets.token_hex(4)
    spec = SandboxSpec(image=args.image, memory_bytes=256 << 20, setup=SETUP)
    config = ManagerConfig(namespace=namespace, idle_ttl_s=None, pool_refill_concurrency=args.refill_concurrency)
    async with open_backend() as backend:
        manager = EnvManager(backend, config)
        await manager.start()
        try:
            started = time.perf_counter()
            await manager.release(await manager.acquire("bench-build", spec))
            build_s = time.perf_counter() - started

            cold_s: list[float] = []
            for index in range(count):
                started = time.perf_counter()
                lease = await manager.acquire(f"cold-{index}", spec)
                cold_s.append(time.perf_counter() - started)
                assert manager.sandbox_info(lease).origin == "cold"
                await manager.release(lease)

            started = time.perf_counter()
            await manager.provisioner.configure_pool(spec, min_size=count, max_size=count)
            await manager.provisioner.wait_for_pool(spec, timeout_s=600)
            fill_s = time.perf_counter() - started

            warm_s: list[float] = []
            leases = []
            for index in range(count):
                started = time.perf_counter()
                lease = await manager.acquire(f"warm-{index}", spec)
                warm_s.append(time.perf_counter() - started)
                leases.append(lease)
            origins = [manager.sandbox_info(lease).origin for lease in leases]
            check = await manager.exec(leases[-1], "cat /etc/thunder-template-ready")
            assert check.stdout.text == "ready\n", check
            (pool,) = manager.provisioner.pools()
        finally:
            await manager.close()
        leaked = await backend.list_managed({"thunder.namespace": namespace})
    cold_p50, warm_p50 = p50_ms(cold_s), p50_ms(warm_s)
    print(
        f"pool: template built in {build_s:.1f} s; cold p50 {cold_p50} ms, warm p50 {warm_p50} ms; "
        f"pool of {count} filled in {fill_s:.1f} s",
        file=sys.stderr,
    )
    return {
        "benchmark": "pool",
        "image": args.image,
        "acquires": count,
        "cold_acquire_ms_p50": cold_p50,
        "cold_acquire_ms_p95": p95_ms(cold_s),
        "warm_acquire_ms_p50": warm_p50,
        "warm_acquire_ms_p95": p95_ms(warm_s),
        "warm_speedup": round(cold_p50 / warm_p50, 1),
        "warm_hits": origins.count("warm"),
        "template_build_s": round(build_s, 2),
        "pool_fill_s": round(fill_s, 2),
        "refill_s": round(pool.refill_s or 0.0, 3),
        "refill_concurrency": args.refill_concurrency,
        "leaked": len(leaked),
    }
