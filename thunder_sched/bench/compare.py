"""The protocol of one comparison (one tool distribution) on one vLLM server: a discarded warm-up, the
admission-cap grid once, then rounds of every paired mode in ABBA order."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from thunder_sched.bench.modes import PAIRED_MODES, Engine, run_mode
from thunder_sched.bench.runner import RunResult
from thunder_sched.bench.stats import abba_order, best_of, cap_grid
from thunder_sched.bench.workload import WorkloadConfig
from thunder_sched.config import PolicyConfig

Progress = Callable[[str], None]


@dataclass(slots=True)
class Comparison:
    tools: str  # the tool distribution's name
    workload: WorkloadConfig
    warmup: RunResult
    grid: dict[int, RunResult]
    best_cap: int
    rounds: list[dict[str, RunResult]]
    ceiling: list[RunResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Protocol:
    policy: PolicyConfig
    rounds: int
    time_limit_s: float
    progress: Progress


async def _run(p: Protocol, label: str, mode: str, engine: Engine, w: WorkloadConfig, cap: int | None) -> RunResult:
    result = await run_mode(mode, engine, w, p.policy, p.time_limit_s, cap)
    p.progress(f"{label} {json.dumps(result.summary())}")
    return result


async def compare(p: Protocol, engine: Engine, tools: str, workload: WorkloadConfig) -> Comparison:
    # The warm-up (first compilation, first prefixes, a cold page cache) would flatter whichever mode came
    # second; it runs through the scheduler so the embedded proxy's imports are warm too, and is discarded.
    warmup = await _run(p, f"[{tools}] warm-up", "thunder", engine, workload, None)
    grid = {}
    for cap in cap_grid(workload.programs):
        grid[cap] = await _run(p, f"[{tools}] grid", f"cap{cap}", engine, workload, cap)
    best = best_of({cap: r.steps_per_min for cap, r in grid.items()})
    rounds = []
    for i in range(p.rounds):
        results = {}
        for mode in abba_order(PAIRED_MODES, i):
            cap = best if mode == "best_cap" else None
            results[mode] = await _run(p, f"[{tools}] round {i + 1}/{p.rounds}", mode, engine, workload, cap)
        rounds.append(results)
    return Comparison(tools, workload, warmup, grid, best, rounds)


async def ceiling(p: Protocol, engine: Engine, comparison: Comparison) -> None:
    """The same workload straight to a server whose pool holds every program: what no scheduling can beat."""
    for i in range(p.rounds):
        label = f"[{comparison.tools}] ceiling {i + 1}/{p.rounds}"
        comparison.ceiling.append(await _run(p, label, "ceiling", engine, comparison.workload, None))
