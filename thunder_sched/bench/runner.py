"""One benchmark run: every program of the workload, straight to vLLM ('direct') or through the scheduler
('thunder'), with vLLM's prefix-cache counters read before and after."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from thunder_sched.bench.cpu import group_cpu_seconds
from thunder_sched.bench.workload import ProgramSpec, WorkloadConfig
from thunder_sched.vllm_metrics import counter_total, gauge_value

Mode = Literal["direct", "thunder"]


class BenchError(RuntimeError):
    """A run could not complete (a request failed or the run exceeded its time limit)."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    program: int
    step: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


@dataclass(slots=True)
class RunResult:
    mode: Mode
    programs: int
    steps: int
    makespan_s: float
    hits: float
    queries: float
    prompt_tokens: int
    ideal_cached_tokens: int
    final_context_tokens: int
    capacity_tokens: int
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

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "programs": self.programs,
            "steps": self.steps,
            "makespan_s": round(self.makespan_s, 2),
            "steps_per_min": round(self.steps_per_min, 2),
            "hit_rate": round(self.hit_rate, 4),
            "ideal_hit_rate": round(self.ideal_hit_rate, 4),
            "oversubscription": round(self.oversubscription, 2),
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


async def _program(
    client: httpx.AsyncClient,
    url: str,
    mode: Mode,
    model: str,
    system: str,
    spec: ProgramSpec,
    config: WorkloadConfig,
    salt: str,
    records: list[StepRecord],
) -> None:
    pid = f"{salt}-p{spec.index}"
    messages: list[dict[str, str]] = [{"role": "system", "content": system}, {"role": "user", "content": spec.task}]
    await asyncio.sleep(spec.start_delay_s)
    for step in range(config.steps):
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": config.output_tokens,
            "ignore_eos": True,  # fixed output length: both modes do the same decode work
            "temperature": 0,
            "cache_salt": salt,
        }
        if mode == "thunder":
            body["program_id"] = pid
        started = time.monotonic()
        resp = await client.post(f"{url}/v1/chat/completions", json=body)
        if resp.status_code != 200:
            raise BenchError(f"{mode} program {spec.index} step {step}: HTTP {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        usage = data["usage"]
        records.append(
            StepRecord(spec.index, step, usage["prompt_tokens"], usage["completion_tokens"], time.monotonic() - started)
        )
        messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"] or ""})
        if step == config.steps - 1:
            break
        if mode == "thunder":
            await _event(client, url, pid, "tool_start")
        await asyncio.sleep(spec.tool_durations_s[step])  # the tool runs
        if mode == "thunder":
            await _event(client, url, pid, "tool_end", spec.tool_durations_s[step])
        messages.append({"role": "user", "content": spec.tool_outputs[step]})
    if mode == "thunder":
        (await client.post(f"{url}/programs/{pid}/release")).raise_for_status()


async def _event(client: httpx.AsyncClient, url: str, pid: str, kind: str, duration: float | None = None) -> None:
    body = {"kind": kind, "sandbox_id": f"sb-{pid}", "tool": "bash", "duration_s": duration}
    (await client.post(f"{url}/programs/{pid}/events", json=body)).raise_for_status()


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
    mode: Mode,
    url: str,
    vllm_url: str,
    model: str,
    system: str,
    programs: list[ProgramSpec],
    config: WorkloadConfig,
    salt: str,
    capacity: int,
    time_limit_s: float,
    engine_pgid: int | None = None,
) -> RunResult:
    limits = httpx.Limits(max_connections=4 * len(programs) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(time_limit_s, connect=10.0), limits=limits) as client:
        await wait_idle(client, vllm_url)
        system_tokens = await system_prefix_tokens(client, vllm_url, model, system)
        hits0, queries0, _ = await cache_counters(client, vllm_url)
        cpu0, load0 = await asyncio.to_thread(group_cpu_seconds, engine_pgid), os.getloadavg()[0]
        records: list[StepRecord] = []
        started = time.monotonic()
        tasks = [
            asyncio.create_task(_program(client, url, mode, model, system, spec, config, salt, records))
            for spec in programs
        ]
        try:
            async with asyncio.timeout(time_limit_s):
                await asyncio.gather(*tasks)
        except TimeoutError as exc:
            raise BenchError(f"{mode} run exceeded its {time_limit_s:.0f}s limit") from exc
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        makespan = time.monotonic() - started
        cpu1, load1 = await asyncio.to_thread(group_cpu_seconds, engine_pgid), os.getloadavg()[0]
        hits1, queries1, _ = await cache_counters(client, vllm_url)
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
        engine_cpu_s=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
        loadavg=(load0, load1),
    )
