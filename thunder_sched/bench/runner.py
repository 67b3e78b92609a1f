"""One benchmark run: every program of the workload against one URL (vLLM or the scheduler in front of it),
streaming, with vLLM's prefix-cache counters read before and after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from thunder_sched.bench.cpu import group_cpu_seconds
from thunder_sched.bench.stats import percentile
from thunder_sched.bench.stream import StreamError, read_stream
from thunder_sched.bench.workload import ProgramSpec, WorkloadConfig
from thunder_sched.errors import SchedulerError
from thunder_sched.vllm_metrics import counter_total, gauge_value


class BenchError(SchedulerError, RuntimeError):
    """A run could not complete (a request failed or the run exceeded its time limit)."""


@dataclass(frozen=True, slots=True)
class Client:
    """How the programs talk to `url`: with program ids (the scheduler tracks them), with tool events
    (tool_start/tool_end), and with at most `cap` programs in flight (None: all at once)."""

    program_ids: bool = False
    tool_events: bool = False
    cap: int | None = None


@dataclass(frozen=True, slots=True)
class StepRecord:
    program: int
    step: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float = 0.0


@dataclass(slots=True)
class RunResult:
    mode: str
    programs: int
    steps: int
    makespan_s: float
    hits: float
    queries: float
    prompt_tokens: int
    ideal_cached_tokens: int
    final_context_tokens: int
    capacity_tokens: int
    system_tokens: int = 0  # the prefix every program shares (held once in the cache)
    records: list[StepRecord] = field(default_factory=list)
    scheduler: dict[str, float] = field(default_factory=dict)
    engine_cpu_s: float | None = None  # CPU seconds of the vLLM processes during the run, if known
    loadavg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end (shared machine)

    @property
    def steps_per_min(self) -> float:
        return 60.0 * self.steps / self.makespan_s

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def ideal_hit_rate(self) -> float:
        return self.ideal_cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def oversubscription(self) -> float:
        return self.final_context_tokens / self.capacity_tokens

    @property
    def unique_oversubscription(self) -> float:
        """As `oversubscription` with the shared system prompt counted once: what the pool really must hold."""
        shared = max(0, self.programs - 1) * self.system_tokens
        return (self.final_context_tokens - shared) / self.capacity_tokens

    def latency(self, q: float) -> float:
        return percentile([r.latency_s for r in self.records], q)

    def ttft(self, q: float) -> float:
        return percentile([r.ttft_s for r in self.records], q)

    def figures(self) -> dict[str, float]:
        """The per-run figures the report takes medians of."""
        return {
            "steps_per_min": self.steps_per_min,
            "hit_rate": self.hit_rate,
            "step_p50_s": self.latency(50),
            "step_p99_s": self.latency(99),
            "ttft_p50_s": self.ttft(50),
            "ttft_p99_s": self.ttft(99),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "programs": self.programs,
            "steps": self.steps,
            "makespan_s": round(self.makespan_s, 2),
            **{k: round(v, 4) for k, v in self.figures().items()},
            "ideal_hit_rate": round(self.ideal_hit_rate, 4),
            "oversubscription": round(self.oversubscription, 2),
            "unique_oversubscription": round(self.unique_oversubscription, 2),
            "engine_cpu_s_per_step": round(self.engine_cpu_s / self.steps, 3) if self.engine_cpu_s else None,
            "loadavg_start_end": [round(x, 1) for x in self.loadavg],
            **self.scheduler,
        }


async def cache_counters(client: httpx.AsyncClient, vllm_url: str) -> tuple[float, float, float]:
    text = (await client.get(f"{vllm_url}/metrics")).text
    return (
        counter_total(text, "vllm:prefix_cache_hits"),
        counter_total(text, "vllm:prefix_cache_queries"),
        (gauge_value(text, "vllm:num_requests_running") or 0.0)
        + (gauge_value(text, "vllm:num_requests_waiting") or 0.0),
    )


async def wait_idle(client: httpx.AsyncClient, vllm_url: str, within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while (await cache_counters(client, vllm_url))[2] > 0:
        if time.monotonic() > deadline:
            raise BenchError(f"vLLM at {vllm_url} still busy after {within_s:.0f}s")
        await asyncio.sleep(0.5)


async def system_prefix_tokens(client: httpx.AsyncClient, vllm_url: str, model: str, system: str) -> int:
    """Tokens of the rendered system message: the prefix every program shares."""
    body = {"model": model, "messages": [{"role": "system", "content": system}], "add_generation_prompt": False}
    resp = await client.post(f"{vllm_url}/tokenize", json=body)
    resp.raise_for_status()
    return int(resp.json()["count"])


@dataclass(frozen=True, slots=True)
class _Target:
    http: httpx.AsyncClient
    url: str
    model: str
    system: str
    config: WorkloadConfig
    salt: str
    how: Client


async def _step(
    t: _Target, pid: str, index: int, step: int, messages: list[dict[str, str]], ready_at: float
) -> StepRecord:
    """One LLM call; latency and TTFT count from `ready_at`, when the program was ready to send it (a capped
    client's wait for a slot is part of its first step's latency, as a held request is for the scheduler)."""
    body: dict[str, Any] = {
        "model": t.model,
        "messages": messages,
        "max_tokens": t.config.output_tokens,
        "ignore_eos": True,  # fixed output length: every mode does the same decode work
        "temperature": 0,
        "cache_salt": t.salt,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if t.how.program_ids:
        body["program_id"] = pid
    started = ready_at
    async with t.http.stream("POST", f"{t.url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            raise BenchError(f"program {index} step {step}: HTTP {resp.status_code}: {text[:300]}")
        try:
            done = await read_stream(resp.aiter_lines(), started)
        except StreamError as exc:
            raise BenchError(f"program {index} step {step}: {exc}") from exc
    messages.append({"role": "assistant", "content": done.content})
    return StepRecord(index, step, done.prompt_tokens, done.completion_tokens, done.latency_s, done.ttft_s)


async def _event(t: _Target, pid: str, kind: str, command: str, duration: float | None = None) -> None:
    body = {"kind": kind, "sandbox_id": f"sb-{pid}", "tool": "bash", "command": command, "duration_s": duration}
    (await t.http.post(f"{t.url}/programs/{pid}/events", json=body)).raise_for_status()


async def _program(
    t: _Target, spec: ProgramSpec, slots: contextlib.AbstractAsyncContextManager[Any], records: list[StepRecord]
) -> None:
    pid = f"{t.salt}-p{spec.index}"
    messages = [{"role": "system", "content": t.system}, {"role": "user", "content": spec.task}]
    await asyncio.sleep(spec.start_delay_s)
    ready_at = time.monotonic()
    async with slots:  # a capped client holds the slot from the first request to the last step
        for step in range(t.config.steps):
            records.append(await _step(t, pid, spec.index, step, messages, ready_at))
            if step == t.config.steps - 1:
                break
            command, duration = spec.tool_commands[step], spec.tool_durations_s[step]
            if t.how.tool_events:
                await _event(t, pid, "tool_start", command)
            await asyncio.sleep(duration)  # the tool runs
            if t.how.tool_events:
                await _event(t, pid, "tool_end", command, duration)
            ready_at = time.monotonic()
            messages.append({"role": "user", "content": spec.tool_outputs[step]})
    if t.how.program_ids:
        (await t.http.post(f"{t.url}/programs/{pid}/release")).raise_for_status()


def ideal_cached(records: list[StepRecord], system_tokens: int) -> int:
    """Prompt tokens an unlimited cache would serve: everything but each step's new tokens. Step 0 shares
    only the system prompt (new for whichever program came first); step k reuses step k-1's context."""
    by_program: dict[int, list[StepRecord]] = {}
    for r in records:
        by_program.setdefault(r.program, []).append(r)
    cached = 0
    first_seen = False
    for steps in (sorted(v, key=lambda r: r.step) for v in by_program.values()):
        for prev, cur in zip([None, *steps], steps, strict=False):
            if prev is None:
                cached += min(system_tokens, cur.prompt_tokens) if first_seen else 0
                first_seen = True
            else:
                cached += min(cur.prompt_tokens, prev.prompt_tokens + prev.completion_tokens)
    return cached


async def run_once(
    *,
    mode: str,
    url: str,
    vllm_url: str,
    model: str,
    system: str,
    programs: list[ProgramSpec],
    config: WorkloadConfig,
    salt: str,
    capacity: int,
    time_limit_s: float,
    how: Client,
    engine_pgid: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,  # tests: a fake vLLM
) -> RunResult:
    limits = httpx.Limits(max_connections=4 * len(programs) + 8)
    timeout = httpx.Timeout(time_limit_s, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as http:
        await wait_idle(http, vllm_url)
        system_tokens = await system_prefix_tokens(http, vllm_url, model, system)
        hits0, queries0, _ = await cache_counters(http, vllm_url)
        cpu0, load0 = await asyncio.to_thread(group_cpu_seconds, engine_pgid), os.getloadavg()[0]
        target = _Target(http, url, model, system, config, salt, how)
        slots = asyncio.Semaphore(how.cap) if how.cap is not None else contextlib.nullcontext()
        records: list[StepRecord] = []
        started = time.monotonic()
        tasks = [asyncio.create_task(_program(target, spec, slots, records)) for spec in programs]
        try:
            async with asyncio.timeout(time_limit_s):
                await asyncio.gather(*tasks)
        except TimeoutError as exc:
            raise BenchError(f"{mode} run exceeded its {time_limit_s:.0f}s limit") from exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        makespan = time.monotonic() - started
        cpu1, load1 = await asyncio.to_thread(group_cpu_seconds, engine_pgid), os.getloadavg()[0]
        hits1, queries1, _ = await cache_counters(http, vllm_url)
    finals = {r.program: r.prompt_tokens + r.completion_tokens for r in records if r.step == config.steps - 1}
    return RunResult(
        mode=mode,
        programs=len(programs),
        steps=len(records),
        makespan_s=makespan,
        hits=hits1 - hits0,
        queries=queries1 - queries0,
        prompt_tokens=sum(r.prompt_tokens for r in records),
        ideal_cached_tokens=ideal_cached(records, system_tokens),
        final_context_tokens=sum(finals.values()),
        capacity_tokens=capacity,
        system_tokens=system_tokens,
        records=records,
        engine_cpu_s=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
        loadavg=(load0, load1),
    )
