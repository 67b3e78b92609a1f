"""python -m thunder_sched.bench [--quick] [--backend URL] ...

The same seeded agentic workload on one vLLM server, in every mode: straight ('direct'), through
thunder-sched with tool events ('thunder'), through it with the paper's policy and no events ('paper'),
and straight with the best admission cap of a small grid ('best_cap'). One discarded warm-up, the cap grid,
then >= 3 rounds in ABBA order; each run with its own cache_salt. A full run adds the 'ceiling': direct
against a second server whose KV pool holds every program. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from thunder_sched.bench.backend import attached_vllm, started_vllm
from thunder_sched.bench.compare import Comparison, Protocol, ceiling, compare
from thunder_sched.bench.modes import Engine, paper_policy
from thunder_sched.bench.report import block, run_log
from thunder_sched.bench.runner import BenchError
from thunder_sched.bench.workload import TOOL_DISTS, WorkloadConfig, make_workload
from thunder_sched.config import PolicyConfig

# The declared workloads; programs from OVERSUBSCRIPTION and the pool. Quick runs on a smaller pool (when the
# bench starts the server) so that one run takes ~30 s on 2 cores and the whole comparison ~10 minutes.
QUICK = WorkloadConfig(steps=4, tool_words=150, output_tokens=16)
QUICK_POOL_TOKENS = 6144
FULL = WorkloadConfig(steps=8, tool_words=150, output_tokens=16)
OVERSUBSCRIPTION = 3.6  # total final context / KV pool
CEILING_ROOM = 1.2  # the ceiling's pool / the largest total final context measured
MIN_ROUNDS = 3
# The declared latency objective of the scheduler modes: plain vLLM's p99 step latency on the quick workload was
# ~10 s (the 2026-11-30 runs), so a ready program may wait ~6 s before it is served first (plus its step's own time).
BENCH_MAX_WAIT_S = 6.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thunder_sched.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1s tools only, smaller pool, no ceiling (~12 min)")
    p.add_argument("--backend", default=None, help="an already running vLLM (base URL); default: start one")
    p.add_argument("--ceiling-backend", default=None, help="a running vLLM whose pool holds every program")
    p.add_argument("--ceiling", action="store_true", help="quick runs: measure the ceiling too (full runs always do)")
    p.add_argument("--programs", type=int, default=None, help=f"default: {OVERSUBSCRIPTION}x the KV pool")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="ABBA rounds of every mode (>= 3)")
    p.add_argument("--allow-few-rounds", action="store_true", help="accept --rounds below 3 (tests only)")
    p.add_argument("--tools", choices=[*TOOL_DISTS, "both"], default=None, help="default: 1s quick, both full")
    p.add_argument("--tool-words", type=int, default=None)
    p.add_argument("--system-words", type=int, default=None)
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda-max", type=float, default=1.0)
    p.add_argument("--lambda-min", type=float, default=0.8, help="restore below this share of the pool")
    p.add_argument("--tau", type=float, default=15.0, help="acting-token decay constant, s")
    p.add_argument(
        "--max-wait",
        type=float,
        default=BENCH_MAX_WAIT_S,
        help="the latency objective (max_wait_s): a ready program waiting this long is served first, s",
    )
    p.add_argument("--min-running", type=int, default=None, help="work-conservation floor (default: the policy's)")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds allowed per run")
    p.add_argument("--results", type=Path, default=None, help="also write every run's summary here (JSON)")
    return p


def _workload(args: argparse.Namespace) -> WorkloadConfig:
    overrides = {
        "programs": args.programs,
        "steps": args.steps,
        "tool_words": args.tool_words,
        "system_words": args.system_words,
        "output_tokens": args.output_tokens,
    }
    base = QUICK if args.quick else FULL
    return replace(base, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})


def _policy(args: argparse.Namespace) -> PolicyConfig:
    extra: dict[str, Any] = {"max_wait_s": args.max_wait}
    if args.min_running is not None:
        extra["min_running"] = args.min_running
    return PolicyConfig(lambda_max=args.lambda_max, lambda_min=args.lambda_min, tau_s=args.tau, **extra)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def final_context_tokens(engine: Engine, workload: WorkloadConfig) -> int:
    """One program's context after its last step, counted by the server's tokenizer."""
    system, programs = make_workload(replace(workload, programs=1))
    spec = programs[0]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": spec.task}]
    for out in spec.tool_outputs:
        messages += [{"role": "assistant", "content": "x " * workload.output_tokens}, {"role": "user", "content": out}]
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{engine.url}/tokenize", json={"model": engine.model, "messages": messages})
        resp.raise_for_status()
    return int(resp.json()["count"]) + workload.output_tokens


def _main_server(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[Engine]:
    pool = QUICK_POOL_TOKENS if args.quick else None  # None: the CPU vLLM's default (15,616 tokens)
    return attached_vllm(args.backend) if args.backend else started_vllm(pool)


def _ceiling_server(args: argparse.Namespace, pool_tokens: int) -> contextlib.AbstractAsyncContextManager[Engine]:
    return attached_vllm(args.ceiling_backend) if args.ceiling_backend else started_vllm(pool_tokens)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds < MIN_ROUNDS and not args.allow_few_rounds:
        raise BenchError(f"--rounds must be at least {MIN_ROUNDS} (or pass --allow-few-rounds)")
    workload, policy = _workload(args), _policy(args)
    tools = [args.tools or ("1s" if args.quick else "both")]
    tools = list(TOOL_DISTS) if tools == ["both"] else tools
    protocol = Protocol(policy, args.rounds, args.time_limit, progress)
    comparisons: list[Comparison] = []
    async with _main_server(args) as engine:
        capacity = engine.capacity_tokens
        if args.programs is None:
            per_program = await final_context_tokens(engine, workload)
            workload = replace(workload, programs=max(2, math.ceil(OVERSUBSCRIPTION * capacity / per_program)))
        progress(f"vLLM {engine.url} ({engine.model}), KV pool {capacity} tokens")
        progress(f"workload {json.dumps(asdict(workload))}, tools {tools} of {TOOL_DISTS}")
        progress(f"policy thunder {policy.model_dump()}; paper = same with time_decay/tool_aware off, no events")
        for name in tools:
            comparisons.append(await compare(protocol, engine, name, workload.with_tools(name)))
    ceiling_pool = None
    with_ceiling = not args.quick or args.ceiling
    if with_ceiling and (args.ceiling_backend or not args.backend):
        largest = max(r.final_context_tokens for c in comparisons for rnd in c.rounds for r in rnd.values())
        ceiling_pool = max(capacity, math.ceil(CEILING_ROOM * largest))
        async with _ceiling_server(args, ceiling_pool) as top:  # the main server is stopped: 2 cores
            if top.capacity_tokens < ceiling_pool:
                raise BenchError(f"the ceiling server's pool ({top.capacity_tokens}) is below {ceiling_pool}")
            ceiling_pool = top.capacity_tokens
            for c in comparisons:
                await ceiling(protocol, top, c)
    elif with_ceiling:
        progress("no ceiling: --backend given without --ceiling-backend")
    summary: dict[str, Any] = {c.tools: block(c) for c in comparisons}
    workload_fields = {k: v for k, v in asdict(workload).items() if not k.startswith("tool_") or k == "tool_words"}
    summary |= {
        "kv_pool_tokens": capacity,
        "ceiling_pool_tokens": ceiling_pool,
        "programs": workload.programs,
        "steps_per_program": workload.steps,
        "rounds": args.rounds,
        "workload": workload_fields | {"tool_dists": {n: TOOL_DISTS[n] for n in tools}},
        "policy": policy.model_dump(),
        "paper_policy": paper_policy(policy).model_dump(),
    }
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        runs = {c.tools: run_log(c) for c in comparisons}
        args.results.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    return summary


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = asyncio.run(main_async(args))
    except (BenchError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0
