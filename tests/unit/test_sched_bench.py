"""The benchmark's parts that need no vLLM: workload, protocol arithmetic, SSE timing, the capped client
(against a fake vLLM), the report, and the subcommand dispatch."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import types
from dataclasses import replace

import httpx
import pytest

from thunder_sched.bench.__main__ import main as bench_main
from thunder_sched.bench.backend import pool_config
from thunder_sched.bench.compare import Comparison
from thunder_sched.bench.report import block
from thunder_sched.bench.runner import Client, RunResult, StepRecord, ideal_cached, run_once
from thunder_sched.bench.stats import (
    abba_order,
    best_of,
    cap_grid,
    gap_closed,
    median_and_min,
    paired_ratios,
    percentile,
)
from thunder_sched.bench.stream import SseReader, StreamError, read_stream
from thunder_sched.bench.workload import COMMANDS, WorkloadConfig, make_workload
from thunder_sched.cpu_vllm.server import estimate_pool_tokens

# -- workload ------------------------------------------------------------------------------------------


def test_workload_is_seeded_and_shares_one_system_prompt() -> None:
    cfg = WorkloadConfig(programs=3, steps=4, seed=7)
    assert make_workload(cfg) == make_workload(cfg)
    system, programs = make_workload(cfg)
    assert len(programs) == 3 and all(len(p.tool_outputs) == len(p.tool_commands) == 3 for p in programs)
    assert len({p.task for p in programs}) == 3  # distinct tasks after the shared prompt
    assert make_workload(replace(cfg, seed=8))[0] != system


def test_tool_steps_carry_a_command_and_the_same_text_under_either_distribution() -> None:
    cfg = WorkloadConfig(programs=4, steps=6, tool_words=5)
    light, heavy = make_workload(cfg.with_tools("1s"))[1], make_workload(cfg.with_tools("heavy"))[1]
    for a, b in zip(light, heavy, strict=True):
        assert a.task == b.task and a.tool_outputs == b.tool_outputs and a.tool_commands == b.tool_commands
        assert a.tool_durations_s != b.tool_durations_s
        pairs = zip(a.tool_commands, a.tool_outputs, strict=True)
        assert all(cmd in COMMANDS and out.startswith(f"$ {cmd}\n") for cmd, out in pairs)
    assert len({c for p in light for c in p.tool_commands}) > 1


@pytest.mark.parametrize(("name", "mean", "tolerance"), [("1s", 1.0, 0.05), ("heavy", 2.0, 0.25)])
def test_the_two_tool_distributions_have_their_declared_means(name: str, mean: float, tolerance: float) -> None:
    cfg = WorkloadConfig(programs=400, steps=21, system_words=1, task_words=1, tool_words=1).with_tools(name)
    durations = [d for p in make_workload(cfg)[1] for d in p.tool_durations_s]
    assert abs(statistics.fmean(durations) - mean) < tolerance
    assert max(durations) > 3 * statistics.median(durations)  # a heavy tail, as the paper's tools


def test_fixed_tool_durations() -> None:
    fixed = make_workload(WorkloadConfig(programs=2, steps=3, tool_dist="fixed", tool_mean_s=1.25))[1]
    assert {d for p in fixed for d in p.tool_durations_s} == {1.25}


# -- protocol arithmetic -------------------------------------------------------------------------------


def test_abba_order_reverses_every_other_round() -> None:
    modes = ("direct", "thunder", "paper", "best_cap")
    assert abba_order(modes, 0) == ["direct", "thunder", "paper", "best_cap"]
    assert abba_order(modes, 1) == ["best_cap", "paper", "thunder", "direct"]
    assert abba_order(modes, 2) == abba_order(modes, 0)


def test_paired_ratios_median_and_minimum() -> None:
    rounds = [{"thunder": 30.0, "direct": 10.0}, {"thunder": 20.0, "direct": 20.0}, {"thunder": 24.0, "direct": 12.0}]
    ratios = paired_ratios(rounds, "thunder", "direct")
    assert ratios == [3.0, 1.0, 2.0]
    assert median_and_min(ratios) == (2.0, 1.0)
    assert paired_ratios([{"thunder": 1.0}], "thunder", "direct") == []
    assert median_and_min([]) == (None, None)


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0


def test_cap_grid_and_best_cap() -> None:
    assert cap_grid(16) == [4, 5, 8]
    assert cap_grid(22) == [6, 7, 11]
    assert cap_grid(3) == [1, 2]
    assert cap_grid(1) == [1]
    assert best_of({4: 10.0, 5: 12.0, 8: 12.0}) == 5


def test_gap_closed() -> None:
    assert gap_closed(thunder=30.0, direct=10.0, ceiling=50.0) == 0.5
    assert gap_closed(thunder=5.0, direct=10.0, ceiling=50.0) == -0.125
    assert gap_closed(thunder=30.0, direct=10.0, ceiling=10.0) is None


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


# -- streaming -----------------------------------------------------------------------------------------


def _chunk(obj: dict) -> str:
    return "data: " + json.dumps(obj)


CANNED = [
    _chunk({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    "",
    _chunk({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
    "",
    _chunk({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}]}),
    "",
    _chunk({"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 2, "total_tokens": 44}}),
    "",
    "data: [DONE]",
    "",
]


async def _lines(lines: list[str]):
    for line in lines:
        yield line


async def test_sse_ttft_is_the_first_chunk_with_text_and_latency_the_last_byte() -> None:
    ticks = iter(range(1, 100))
    step = await read_stream(_lines(CANNED), started=0.0, clock=lambda: float(next(ticks)))
    # Lines arrive at t = 1, 2, ...: the role chunk (t=1) and the blank (t=2) are no token; "Hel" is at t=3.
    assert step.ttft_s == 3.0
    assert step.latency_s == len(CANNED) + 1  # the clock read once more after the last line
    assert (step.content, step.prompt_tokens, step.completion_tokens) == ("Hello", 42, 2)


def test_sse_without_usage_is_an_error_and_without_text_ttft_is_the_end() -> None:
    reader = SseReader(started=10.0)
    reader.feed(CANNED[0], 11.0)
    with pytest.raises(StreamError):
        reader.finish(12.0)
    reader.feed(CANNED[6], 12.0)
    assert reader.finish(13.0).ttft_s == 3.0


# -- the client against a fake vLLM --------------------------------------------------------------------


class FakeVllm:
    """Streams a fixed completion after a short delay; records which programs are in flight (between their
    first request and the answer to their last) and every tool event."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.requests: dict[str, int] = {}
        self.open: set[str] = set()
        self.max_open = 0
        self.events: list[dict] = []
        self.program_ids: set[str | None] = set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/metrics":
            return httpx.Response(200, text="")
        if path == "/tokenize":
            return httpx.Response(200, json={"count": 5})
        if path.endswith("/events"):
            self.events.append(json.loads(request.content))
            return httpx.Response(202, json={})
        if path.endswith("/release"):
            return httpx.Response(200, json={})
        body = json.loads(request.content)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        self.program_ids.add(body.get("program_id"))
        program = body["messages"][1]["content"].split(":")[0]
        self.open.add(program)
        self.max_open = max(self.max_open, len(self.open))
        await asyncio.sleep(0.01)
        self.requests[program] = self.requests.get(program, 0) + 1
        if self.requests[program] == self.steps:
            self.open.discard(program)
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        lines = [CANNED[2], "", _chunk({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": 1}})]
        return httpx.Response(200, text="\n".join([*lines, "", "data: [DONE]", "", ""]))


async def _run(fake: FakeVllm, programs: int, how: Client) -> RunResult:
    cfg = WorkloadConfig(programs=programs, steps=fake.steps, tool_words=3, tool_dist="fixed", tool_mean_s=0.3)
    system, specs = make_workload(cfg)
    return await run_once(
        mode="test",
        url="http://fake",
        vllm_url="http://fake",
        model="m",
        system=system,
        programs=specs,
        config=cfg,
        salt="s",
        capacity=1000,
        time_limit_s=30,
        how=how,
        transport=httpx.MockTransport(fake),
    )


async def test_a_capped_client_keeps_at_most_cap_programs_in_flight() -> None:
    # Each program lasts > 0.6 s (two 0.3 s tools) and starts within 0.5 s: uncapped, all overlap.
    uncapped = FakeVllm(steps=3)
    result = await _run(uncapped, 4, Client())
    assert uncapped.max_open == 4 and result.steps == 12
    capped = FakeVllm(steps=3)
    result = await _run(capped, 4, Client(cap=2))
    assert capped.max_open == 2 and result.steps == 12
    assert capped.program_ids == {None} and not capped.events  # straight to vLLM: no ids, no events
    assert all(r.ttft_s > 0 and r.latency_s >= r.ttft_s for r in result.records)
    # A program waiting for a slot is ready all along: that wait is part of its first step's latency
    # (as a request held by the scheduler is), so the last two programs' first steps take > 0.6 s.
    first_steps = sorted(r.latency_s for r in result.records if r.step == 0)
    assert first_steps[-1] > 0.5 and first_steps[0] < 0.3


async def test_the_scheduler_client_sends_ids_and_tool_events_with_the_command() -> None:
    fake = FakeVllm(steps=2)
    await _run(fake, 2, Client(program_ids=True, tool_events=True))
    assert None not in fake.program_ids and len(fake.program_ids) == 2
    assert sorted(e["kind"] for e in fake.events) == ["tool_end", "tool_end", "tool_start", "tool_start"]
    assert all(e["tool"] == "bash" and e["command"] in COMMANDS for e in fake.events)


# -- report and entry point ----------------------------------------------------------------------------


def _result(mode: str, spm: float, p99: float, hit: float = 0.5, scheduler: dict | None = None) -> RunResult:
    records = [StepRecord(0, s, 100, 10, latency_s=p99, ttft_s=p99 / 2) for s in range(6)]
    return RunResult(
        mode=mode,
        programs=1,
        steps=6,
        makespan_s=6 * 60 / spm,
        hits=hit * 100,
        queries=100,
        prompt_tokens=100,
        ideal_cached_tokens=80,
        final_context_tokens=3600,
        capacity_tokens=1000,
        records=records,
        scheduler=scheduler or {},
    )


def test_report_takes_medians_and_paired_ratios() -> None:
    def rnd(direct: float, thunder: float) -> dict[str, RunResult]:
        return {
            "direct": _result("direct", direct, p99=2.0),
            "thunder": _result("thunder", thunder, p99=3.0, hit=0.72, scheduler={"pauses_thrashing": 2.0}),
            "paper": _result("paper", 20.0, p99=2.0),
            "best_cap": _result("best_cap", 15.0, p99=2.0),
        }

    comparison = Comparison(
        tools="1s",
        workload=WorkloadConfig(),
        warmup=_result("thunder", 1.0, 1.0),
        grid={2: _result("cap2", 15.0, 1.0), 3: _result("cap3", 12.0, 1.0)},
        best_cap=2,
        rounds=[rnd(10.0, 30.0), rnd(20.0, 20.0), rnd(12.0, 24.0)],
        ceiling=[_result("ceiling", 40.0, 1.0)] * 3,
    )
    out = block(comparison)
    assert out["modes"]["direct"]["steps_per_min"] == 12.0 and out["modes"]["thunder"]["steps_per_min"] == 24.0
    assert (out["ratio_vs_direct_median"], out["ratio_vs_direct_min"]) == (2.0, 1.0)
    assert (out["ratio_vs_best_cap_median"], out["ratio_vs_best_cap_min"]) == (1.6, 1.3333)
    assert out["ratio_vs_paper_median"] == 1.2
    assert out["hit_over_ideal"] == 0.9 and out["p99_over_direct"] == 1.5 and out["oversubscription"] == 3.6
    assert out["cap_grid"] == {"2": 15.0, "3": 12.0} and out["best_cap"] == 2
    assert out["gap_closed"] == pytest.approx((24 - 12) / (40 - 12), abs=1e-4)
    assert out["ceiling_over_direct"] == pytest.approx(40 / 12, abs=1e-4)
    assert out["scheduler"] == {"pauses_thrashing": 6.0}
    shared = replace(_result("direct", 10.0, 1.0), programs=3, system_tokens=100)
    assert shared.unique_oversubscription == pytest.approx((3600 - 2 * 100) / 1000)


@pytest.mark.parametrize("tokens", [6144, 6000, 70_000])
def test_pool_config_leaves_room_for_the_reserved_block(tokens: int) -> None:
    model = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256}
    config = pool_config({**model, "max_position_embeddings": 8192}, tokens, "bfloat16")
    # vLLM keeps one block aside: the pool must hold max_model_len tokens plus that block.
    assert estimate_pool_tokens(model, config.kv_cache_memory_bytes, "bfloat16") >= tokens + 128
    assert config.max_model_len == min(tokens, 8192)


def test_entry_point_dispatches_subcommands_and_rejects_few_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.SimpleNamespace(main=lambda argv: seen.append(argv) or 7)
    monkeypatch.setitem(sys.modules, "thunder_sched.bench.control", fake)
    assert bench_main(["control", "--x"]) == 7 and seen == [["--x"]]
    started = time.monotonic()
    assert bench_main(["--rounds", "2", "--backend", "http://127.0.0.1:9"]) == 1  # refused before connecting
    assert time.monotonic() - started < 5
