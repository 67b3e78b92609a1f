"""python -m thunder_sched.bench [--quick] [--backend URL] ...

Runs the same seeded agentic workload straight against vLLM and through thunder-sched, alternating, on the
same server in the same run (each run with its own cache_salt), and prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

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
    p.add_argument(
        "--programs", type=int, default=None, help="parallel programs (default: enough for 2.5x the KV pool)"
    )
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="runs per mode, alternating (>= 2)")
    p.add_argument("--sweep", default=None, help="comma-separated program counts for the plot (e.g. 4,8,12,16)")
    p.add_argument("--tool-dist", choices=["fixed", "lognormal"], default="lognormal")
    p.add_argument("--tool-mean", type=float, default=None, help="mean tool duration, seconds")
    p.add_argument("--tool-words", type=int, default=None)
    p.add_argument("--system-words", type=int, default=None)
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda-max", type=float, default=1.0)
    p.add_argument("--lambda-min", type=float, default=0.8, help="restore below this share of the pool")
    p.add_argument("--tau", type=float, default=15.0, help="acting-token decay constant, s")
    p.add_argument("--max-wait", type=float, default=None, help="starvation bound, s (default: the policy's)")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds allowed per run")
    p.add_argument("--plot", type=Path, default=None, help="PNG for the sweep (default docs/sched_throughput.png)")
    p.add_argument("--results", type=Path, default=None, help="also write every run's summary here (JSON)")
    return p


def _workload(args: argparse.Namespace) -> WorkloadConfig:
    # Sized for the CPU vLLM's 15,616-token pool: total final context 2-4x the pool.
    base = (
        WorkloadConfig(steps=8, tool_words=150, output_tokens=16, tool_mean_s=1.0)
        if args.quick
        else WorkloadConfig(steps=12, tool_words=150, output_tokens=16, tool_mean_s=1.0)
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
    extra = {} if args.max_wait is None else {"max_wait_s": args.max_wait}
    return PolicyConfig(lambda_max=args.lambda_max, lambda_min=args.lambda_min, tau_s=args.tau, **extra)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def vllm_backend(url: str | None) -> AsyncIterator[tuple[str, str, int | None]]:
    """(base URL, model, process group) of the given server (group unknown), or of a CPU vLLM started
    here and stopped afterwards."""
    if url is not None:
        async with httpx.AsyncClient(timeout=30) as client:
            models = (await client.get(f"{url.rstrip('/')}/v1/models")).json()["data"]
        yield url.rstrip("/"), models[0]["id"], None
        return
    from thunder_sched.cpu_vllm import CachePaths, CpuVllmServer, ServerConfig, cache_root_from_env, ensure_cpu_vllm

    paths = CachePaths(cache_root_from_env(os.environ))
    prepared = await ensure_cpu_vllm(paths)
    log_path = prepared.logs_dir / f"bench-vllm-{time.strftime('%Y%m%d-%H%M%S')}.log"
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    async with CpuVllmServer(prepared.python, prepared.model_dir, ServerConfig(), log_path=log_path) as server:
        yield server.url, server.model, server.pid  # the supervisor leads the server's process group


async def _scheduler_counts(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{url}/metrics")).text
    counts = {"restores": counter_total(text, "thunder_restores")}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "thunder_pauses_total":
                counts[f"pauses_{sample.labels['reason']}"] = sample.value
    return counts


async def one_run(
    mode: Mode,
    vllm_url: str,
    model: str,
    workload: WorkloadConfig,
    policy: PolicyConfig,
    salt: str,
    capacity: int,
    time_limit: float,
    pgid: int | None = None,
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
        engine_pgid=pgid,
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
    pgid: int | None,
) -> list[RunResult]:
    results = []
    for i in range(repeats):
        order: tuple[Mode, Mode] = ("direct", "thunder") if i % 2 == 0 else ("thunder", "direct")
        for mode in order:
            salt = f"{tag}-{mode}-{i}-{time.time_ns()}"
            result = await one_run(mode, vllm_url, model, workload, policy, salt, capacity, time_limit, pgid)
            progress(json.dumps(result.summary()))
            results.append(result)
    return results


def _cpu_per_step(results: list[RunResult], mode: Mode) -> float | None:
    runs = [r for r in results if r.mode == mode and r.engine_cpu_s is not None]
    return round(sum(r.engine_cpu_s or 0.0 for r in runs) / sum(r.steps for r in runs), 3) if runs else None


async def size_programs(vllm_url: str, model: str, workload: WorkloadConfig, capacity: int, target: float) -> int:
    """Programs needed for `target` x the KV pool in total final context, from real token counts."""
    system, programs = make_workload(replace(workload, programs=1))
    spec = programs[0]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": spec.task}]
    for out in spec.tool_outputs:
        messages += [{"role": "assistant", "content": "x " * workload.output_tokens}, {"role": "user", "content": out}]
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{vllm_url}/tokenize", json={"model": model, "messages": messages})
        resp.raise_for_status()
    final = int(resp.json()["count"]) + workload.output_tokens
    return max(2, math.ceil(target * capacity / final))


def _mean(results: list[RunResult], mode: Mode, attr: str) -> float:
    return statistics.fmean(getattr(r, attr) for r in results if r.mode == mode)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workload, policy = _workload(args), _policy(args)
    repeats = args.repeats or (2 if args.quick else 3)
    if repeats < 2:
        raise BenchError("--repeats must be at least 2 (alternating runs per mode)")
    sweep = [int(n) for n in args.sweep.split(",")] if args.sweep else ([] if args.quick else [4, 8, 12])
    async with vllm_backend(args.backend) as (vllm_url, model, pgid):
        async with httpx.AsyncClient(timeout=30) as client:
            cache = parse_cache_config((await client.get(f"{vllm_url}/metrics")).text)
        if cache is None:
            raise BenchError(f"{vllm_url}/metrics has no vllm:cache_config_info: is it a vLLM server?")
        capacity = cache.capacity_tokens
        if args.programs is None:
            target = 2.5  # x the KV pool, within the 2-4x
            workload = replace(workload, programs=await size_programs(vllm_url, model, workload, capacity, target))
        progress(f"vLLM {vllm_url} model {model}: KV pool {capacity} tokens; workload {workload}; {policy}")
        main = await compare(vllm_url, model, workload, policy, repeats, capacity, args.time_limit, "main", pgid)
        points = []
        for n in sweep:
            runs = await compare(
                vllm_url,
                model,
                replace(workload, programs=n),
                policy,
                1,
                capacity,
                args.time_limit,
                f"sweep{n}",
                pgid,
            )
            points += [r.summary() for r in runs]
    if points:
        main_n = workload.programs
        if not any(p["programs"] == main_n for p in points):  # the main comparison is a point too
            for mode in ("direct", "thunder"):
                points.append(
                    {
                        "mode": mode,
                        "programs": main_n,
                        "steps_per_min": _mean(main, mode, "steps_per_min"),
                        "oversubscription": _mean(main, mode, "oversubscription"),
                    }
                )
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
        "direct_engine_cpu_s_per_step": _cpu_per_step(main, "direct"),
        "thunder_engine_cpu_s_per_step": _cpu_per_step(main, "thunder"),
        "programs": workload.programs,
        "steps_per_program": workload.steps,
        "runs_per_mode": repeats,
        "kv_pool_tokens": capacity,
        "policy": policy.model_dump(),
        "workload": asdict(workload),
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
