"""The compared modes and how one run of each is made: straight to vLLM (all at once or capped) or through
an in-process thunder-sched (tool-aware with events, or the paper's policy without them)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from thunder_sched.bench.runner import Client, RunResult, run_once
from thunder_sched.bench.serve import running_scheduler
from thunder_sched.bench.workload import WorkloadConfig, make_workload
from thunder_sched.config import PolicyConfig, SchedulerConfig

PAIRED_MODES = ("direct", "thunder", "paper", "best_cap")  # every round, in ABBA order


@dataclass(frozen=True, slots=True)
class Engine:
    """The vLLM server the runs go to, and what every run needs to know about it."""

    url: str
    model: str
    capacity_tokens: int
    pgid: int | None = None  # process group of a server started here (its CPU time is measured)


def paper_policy(policy: PolicyConfig) -> PolicyConfig:
    """ThunderAgent's public default: no time decay of acting programs, no use of tool events, every
    program's context counted whole (no shared-prefix accounting), no work-conservation floor."""
    return policy.model_copy(
        update={"time_decay": False, "tool_aware": False, "shared_prefixes": False, "min_running": 0}
    )


async def scheduler_counters(url: str) -> dict[str, float]:
    """Every `thunder_*` counter of the proxy's /metrics, one key per label set (e.g. pauses_thrashing)."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(f"{url}/metrics")
        resp.raise_for_status()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        if family.type != "counter" or not family.name.startswith("thunder_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = "_".join([family.name.removeprefix("thunder_"), *sample.labels.values()])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


async def run_mode(
    mode: str,
    engine: Engine,
    workload: WorkloadConfig,
    policy: PolicyConfig,
    time_limit_s: float,
    cap: int | None = None,
) -> RunResult:
    """One run of `mode` ('direct', 'ceiling', 'thunder', 'paper', or a capped direct run given `cap`),
    with a fresh cache_salt so no run reuses another's cache."""
    system, programs = make_workload(workload)
    run = functools.partial(
        run_once,
        mode=mode,
        vllm_url=engine.url,
        model=engine.model,
        system=system,
        programs=programs,
        config=workload,
        salt=f"{mode}-{time.time_ns()}",
        capacity=engine.capacity_tokens,
        time_limit_s=time_limit_s,
        engine_pgid=engine.pgid,
    )
    if mode not in ("thunder", "paper"):
        return await run(url=engine.url, how=Client(cap=cap))
    events = mode == "thunder"
    config = SchedulerConfig(backends=(engine.url,), policy=policy if events else paper_policy(policy))
    async with running_scheduler(config) as url:
        result = await run(url=url, how=Client(program_ids=True, tool_events=events))
        result.scheduler = await scheduler_counters(url)
    return result
