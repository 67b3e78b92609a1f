"""What a comparison reports: medians over the rounds per mode, and thunder's paired ratios (median and
minimum, so one lucky round cannot carry the result)."""

from __future__ import annotations

import statistics
from typing import Any

from thunder_sched.bench.compare import Comparison
from thunder_sched.bench.modes import PAIRED_MODES
from thunder_sched.bench.runner import RunResult
from thunder_sched.bench.stats import gap_closed, median_and_min, paired_ratios


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _medians(runs: list[RunResult]) -> dict[str, float | None]:
    figures = [r.figures() for r in runs]
    return {k: _r(statistics.median(f[k] for f in figures)) for k in figures[0]}


def _summed_counters(runs: list[RunResult]) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in runs:
        for k, v in r.scheduler.items():
            total[k] = total.get(k, 0.0) + v
    return total


def block(c: Comparison) -> dict[str, Any]:
    modes = {m: _medians([rnd[m] for rnd in c.rounds]) for m in PAIRED_MODES}
    if c.ceiling:
        modes["ceiling"] = _medians(c.ceiling)
    spm = [{m: r.steps_per_min for m, r in rnd.items()} for rnd in c.rounds]
    p99 = [{m: r.latency(99) for m, r in rnd.items()} for rnd in c.rounds]
    out: dict[str, Any] = {
        "tool_mean_s": c.workload.tool_mean_s,
        "tool_sigma": c.workload.tool_sigma,
        "modes": modes,
    }
    for den in ("direct", "best_cap", "paper"):
        median, minimum = median_and_min(paired_ratios(spm, "thunder", den))
        out[f"ratio_vs_{den}_median"], out[f"ratio_vs_{den}_min"] = _r(median), _r(minimum)
    thunder = [rnd["thunder"] for rnd in c.rounds]
    out["hit_over_ideal"] = _r(statistics.median(r.hit_rate / r.ideal_hit_rate for r in thunder if r.ideal_hit_rate))
    out["p99_over_direct"] = _r(median_and_min(paired_ratios(p99, "thunder", "direct"))[0])
    paired = [r for rnd in c.rounds for r in rnd.values()]
    out["oversubscription"] = _r(statistics.median(r.oversubscription for r in paired))
    out["unique_oversubscription"] = _r(statistics.median(r.unique_oversubscription for r in paired))
    out["best_cap"] = c.best_cap
    out["cap_grid"] = {str(cap): _r(r.steps_per_min) for cap, r in c.grid.items()}
    if c.ceiling:
        direct = statistics.median(rnd["direct"].steps_per_min for rnd in c.rounds)
        top = statistics.median(r.steps_per_min for r in c.ceiling)
        out["gap_closed"] = _r(gap_closed(statistics.median(r.steps_per_min for r in thunder), direct, top))
        out["ceiling_over_direct"] = _r(top / direct) if direct > 0 else None  # no scheduler's ratio can pass it
    out["scheduler"] = _summed_counters(thunder)  # summed over the rounds
    out["scheduler_paper"] = _summed_counters([rnd["paper"] for rnd in c.rounds])
    return out


def run_log(c: Comparison) -> dict[str, Any]:
    """Every run's summary, for --results."""
    return {
        "warmup": c.warmup.summary(),
        "grid": [r.summary() for r in c.grid.values()],
        "rounds": [[r.summary() for r in rnd.values()] for rnd in c.rounds],
        "ceiling": [r.summary() for r in c.ceiling],
    }
