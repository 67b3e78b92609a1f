"""The benchmark's pure parts: seeded workload and the ideal hit rate arithmetic."""

from __future__ import annotations

import statistics
from dataclasses import replace

from thunder_sched.bench.runner import StepRecord, ideal_cached
from thunder_sched.bench.workload import WorkloadConfig, make_workload


def test_workload_is_seeded_and_shares_one_system_prompt() -> None:
    cfg = WorkloadConfig(programs=3, steps=4, seed=7)
    assert make_workload(cfg) == make_workload(cfg)
    system, programs = make_workload(cfg)
    assert len(programs) == 3 and all(len(p.tool_outputs) == 3 for p in programs)
    assert len({p.task for p in programs}) == 3  # distinct tasks after the shared prompt
    assert make_workload(replace(cfg, seed=8))[0] != system


def test_tool_durations_fixed_or_lognormal_with_the_requested_mean() -> None:
    fixed = make_workload(WorkloadConfig(programs=2, steps=3, tool_dist="fixed", tool_mean_s=1.25))[1]
    assert {d for p in fixed for d in p.tool_durations_s} == {1.25}
    cfg = WorkloadConfig(programs=400, steps=6, tool_dist="lognormal", tool_mean_s=2.0, tool_sigma=0.8)
    durations = [d for p in make_workload(cfg)[1] for d in p.tool_durations_s]
    assert abs(statistics.fmean(durations) - 2.0) < 0.15
    assert max(durations) > 3 * statistics.median(durations)  # a heavy tail, as the paper's tools


def test_ideal_cached_counts_everything_but_each_steps_new_tokens() -> None:
    records = [
        StepRecord(program=0, step=0, prompt_tokens=100, completion_tokens=10, latency_s=1),
        StepRecord(program=0, step=1, prompt_tokens=150, completion_tokens=10, latency_s=1),
        StepRecord(program=1, step=0, prompt_tokens=90, completion_tokens=10, latency_s=1),
        StepRecord(program=1, step=1, prompt_tokens=130, completion_tokens=10, latency_s=1),
    ]
    # Program 0's first prompt is all new; program 1 reuses the 60-token system prompt; later steps
    # reuse the previous prompt and its completion.
    assert ideal_cached(records, system_tokens=60) == 0 + 110 + 60 + 100
