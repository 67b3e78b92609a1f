"""python -m thunder_sched.bench [--quick] [--backend URL] ...

Runs the same seeded agentic workload straight against vLLM and through thunder-sched, alternating, on the
same server in the same run (each run with its own cache_salt), and prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from thunder_sched.bench.plot import plot_sweep
from thunder_sched.bench.runner import BenchError, Mode, RunResult, run_once
from thunder_sched.bench.serve import running_scheduler
from thunder_sched.bench.workload import WorkloadConfig, make_workload
from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.vllm_metrics import counter_total, parse_cache_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thunder_sched.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one size, two runs per mode (about 5 minutes)")
    p.add_argument("--backend", default=None, help="an already running vLLM (base URL); default: start one")
    p.add_argument("--programs", type=int, default=None, help="parallel programs of the main comparison")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="runs per mode, alternating (>= 2)")
    p.add_argument("--sweep", default=None, help="comma-separated program counts for the plot (e.g. 4,8,12,16)")
    p.add_argument("--tool-dist", choices=["fixed", "lognormal"], default="lognormal")
    p.add_argument("--tool-mean", type=float, default=None, help="mean tool duration, seconds")
    p.add_argument("--tool-words", type=int, default=None)
    p.add_argument("--system-words", type=int, default=None)
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda-max", type=float, default=None)
    p.add_argument("--tau", type=float, default=None)
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds allowed per run")
    p.add_argument("--plot", type=Path, default=None, help="PNG for the sweep (default docs/sched_throughput.png)")
    p.add_argument("--results", type=Path, default=None, help="also write every run's summary here (JSON)")
    return p


def _workload(args: argparse.Namespace) -> WorkloadConfig:
    base = (
        WorkloadConfig(programs=10, steps=6, system_words=400, tool_words=220, tool_mean_s=2.0)
        if args.quick
        else WorkloadConfig(programs=14, steps=8, system_words=400, tool_words=220, tool_mean_s=2.0)
    )
    overrides = {
        "programs": args.programs,
        "steps": args.steps,
        "tool_mean_s": args.tool_mean,
        "tool_words": args.tool_words,
        "system_words": args.system_words,
        "output_tokens": args.output_tokens,
    }
    return replace(
        base, tool_dist=args.tool_dist, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None}
    )


def _policy(args: argparse.Namespace) -> PolicyConfig:
    fields: dict[str, Any] = {}
    if args.lambda_max is not None:
        fields["lambda_max"] = args.lambda_max
    if args.tau is not None:
        fields["tau_s"] = args.tau
    return PolicyConfig(**fields)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def vllm_backend(url: str | None) -> AsyncIterator[tuple[str, str]]:
    """(base URL, model) of the given server, or of a CPU vLLM started here and stopped afterwards."""
    if url is not None:
        async with httpx.AsyncClient(timeout=30) as client:
            models = (await client.get(f"{url.rstrip('/')}/v1/models")).json()["data"]
        yield url.rstrip("/"), models[0]["id"]
        return
    from thunder_sched.cpu_vllm import CachePaths, CpuVllmServer, ServerConfig, cache_root_from_env, ensure_cpu_vllm

    paths = CachePaths(cache_root_from_env(os.environ))
    prepared = await ensure_cpu_vllm(paths)
    log_path = prepared.logs_dir / f"bench-vllm-{time.strftime('%Y%m%d-%H%M%S')}.log"
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    async with CpuVllmServer(prepared.python, prepared.model_dir, ServerConfig(), log_path=log_path) as server:
        yield server.url, server.model


async def _scheduler_counts(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{url}/metrics")).text
    return {
        "pauses": counter_total(text, "thunder_pauses"),
        "restores": counter_total(text, "thunder_restores"),
    }


async def one_run(
    mode: Mode,
    vllm_url: str,
    model: str,
    workload: WorkloadConfig,
    policy: PolicyConfig,
    salt: str,
    capacity: int,
    time_limit: float,
) -> RunResult:
    system, programs = make_workload(workload)
    kw: dict[str, Any] = dict(
        mode=mode,
        vllm_url=vllm_url,
        model=model,
        system=system,
        programs=programs,
        config=workload,
        salt=salt,
        capacity=capacity,
        time_limit_s=time_limit,
    )
    if mode == "direct":
        return await run_once(url=vllm_url, **kw)
    config = SchedulerConfig(backends=(vllm_url,), policy=policy)
    async with running_scheduler(config) as url:
        result = await run_once(url=url, **kw)
        result.scheduler = await _scheduler_counts(url)
    return result


async def compare(
    vllm_url: str,
    model: str,
    workload: WorkloadConfig,
    policy: PolicyConfig,
    repeats: int,
    capacity: int,
    time_limit: float,
    tag: str,
) -> list[RunResult]:
    results = []
    for i in range(repeats):
        order: tuple[Mode, Mode] = ("direct", "thunder") if i % 2 == 0 else ("thunder", "direct")
        for mode in order:
            salt = f"{tag}-{mode}-{i}-{time.time_ns()}"
            result = await one_run(mode, vllm_url, model, workload, policy, salt, capacity, time_limit)
            progress(json.dumps(result.summary()))
            results.append(result)
    return results


def _mean(results: list[RunResult], mode: Mode, attr: str) -> float:
    return statistics.fmean(getattr(r, attr) for r in results if r.mode == mode)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workload, policy = _workload(args), _policy(args)
    repeats = args.repeats or 2
    if repeats < 2:
        raise BenchError("--repeats must be at least 2 (alternating runs per mode)")
    sweep = [int(n) for n in args.sweep.split(",")] if args.sweep else ([] if args.quick else [4, 8, 12, 16])
    async with vllm_backend(args.backend) as (vllm_url, model):
        async with httpx.AsyncClient(timeout=30) as client:
            cache = parse_cache_config((await client.get(f"{vllm_url}/metrics")).text)
        if cache is None:
            raise BenchError(f"{vllm_url}/metrics has no vllm:cache_config_info: is it a vLLM server?")
        capacity = cache.capacity_tokens
        progress(f"vLLM {vllm_url} model {model}: KV pool {capacity} tokens; workload {workload}; {policy}")
        main = await compare(vllm_url, model, workload, policy, repeats, capacity, args.time_limit, "main")
        points = []
        for n in sweep:
            runs = await compare(
                vllm_url, model, replace(workload, programs=n), policy, 1, capacity, args.time_limit, f"sweep{n}"
            )
            points += [r.summary() for r in runs]
    if points:
        main_n = workload.programs
        if not any(p["programs"] == main_n for p in points):  # the main comparison is a point too
            for mode in ("direct", "thunder"):
                points.append({"mode": mode, "programs": main_n, "steps_per_min": _mean(main, mode, "steps_per_min")})
        points.sort(key=lambda p: (p["mode"], p["programs"]))
        path = args.plot or Path("docs/sched_throughput.png")
        plot_sweep(points, path, f"CPU vLLM, KV pool {capacity} tokens, {workload.steps} steps/program")
        progress(f"plot written to {path}")
    direct_spm = _mean(main, "direct", "steps_per_min")
    thunder_spm = _mean(main, "thunder", "steps_per_min")
    summary = {
        "direct_steps_per_min": round(direct_spm, 2),
        "thunder_steps_per_min": round(thunder_spm, 2),
        "throughput_ratio": round(thunder_spm / direct_spm, 3),
        "direct_hit_rate": round(_mean(main, "direct", "hit_rate"), 4),
        "thunder_hit_rate": round(_mean(main, "thunder", "hit_rate"), 4),
        "ideal_hit_rate": round(statistics.fmean(r.ideal_hit_rate for r in main), 4),
        "oversubscription": round(statistics.fmean(r.oversubscription for r in main), 2),
        "programs": workload.programs,
        "steps_per_program": workload.steps,
        "runs_per_mode": repeats,
        "kv_pool_tokens": capacity,
    }
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(
            json.dumps({"summary": summary, "main": [r.summary() for r in main], "sweep": points}, indent=2)
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = asyncio.run(main_async(args))
    except (BenchError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
