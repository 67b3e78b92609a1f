"""python -m thunder_sched.bench control: the scheduler's own cost at scale, without an engine.

1,000 programs x 8 backends (fake vLLM /metrics answered in-process) send requests and tool events at a
fixed total rate (default 300 events/s) for a fixed time. Measured: the duration of every policy round
(`decide_ms_p50/p99/max`) and the share of one core spent inside the scheduler (rounds plus event handlers)
over the run's wall time. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from thunder_sched.config import SchedulerConfig
from thunder_sched.events import ToolEvent
from thunder_sched.program import Usage
from thunder_sched.scheduler import Scheduler


@dataclass(frozen=True, slots=True)
class ControlWorkload:
    programs: int = 1000
    backends: int = 8
    events_per_s: float = 300.0
    duration_s: float = 20.0
    capacity_tokens: int = 250_000  # per backend: ~2.5 M tokens of programs oversubscribe it
    seed: int = 0


def _fake_engine(capacity: int) -> httpx.MockTransport:
    blocks = capacity // 16
    text = (
        "# TYPE vllm:cache_config_info gauge\n"
        f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{blocks}"}} 1.0\n'
    )
    return httpx.MockTransport(lambda _: httpx.Response(200, text=text))


class _Timed:
    """Accumulates time spent in the scheduler's synchronous entry points."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.rounds_ms: list[float] = []

    def wrap_round(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def timed() -> Any:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                dt = time.perf_counter() - t0
                self.busy_s += dt
                self.rounds_ms.append(dt * 1000)

        return timed

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.busy_s += time.perf_counter() - t0

        return timed


async def _program(
    sched: Scheduler, timed: _Timed, index: int, period_s: float, stop: asyncio.Event, rng: random.Random
) -> None:
    """One agent: request (generation ~0.3 s), tool (lognormal), repeat; 4 events per step."""
    pid = f"ctl-{index}"
    tokens = rng.randint(1_000, 4_000)
    await asyncio.sleep(rng.uniform(0, period_s))
    while not stop.is_set():
        lease = await sched.admit(pid, "completion", {"prompt": "x" * (tokens * 4), "max_tokens": 64})
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        out = rng.randint(16, 64)
        timed.wrap(sched.finish)(lease, usage=Usage(tokens, out), completed=True)
        tokens = min(tokens + out + rng.randint(50, 800), 60_000)
        command = rng.choice(["pytest -q", "ls", "pip install x", "grep -r foo", "make"])
        start = ToolEvent(kind="tool_start", program_id=pid, sandbox_id="s", tool="bash", command=command)
        t0 = time.perf_counter()
        await sched.on_tool_event(start)
        timed.busy_s += time.perf_counter() - t0
        tool_s = max(period_s - 0.3, 0.05) * rng.lognormvariate(-0.3, 0.8)
        await asyncio.sleep(tool_s)
        end = ToolEvent(
            kind="tool_end", program_id=pid, sandbox_id="s", tool="bash", command=command, duration_s=tool_s
        )
        t0 = time.perf_counter()
        await sched.on_tool_event(end)
        timed.busy_s += time.perf_counter() - t0
    timed.wrap(sched.release)(pid)


async def run_control(workload: ControlWorkload) -> dict[str, Any]:
    urls = tuple(f"http://engine-{i}.invalid" for i in range(workload.backends))
    config = SchedulerConfig(backends=urls, tokenize_first_request=False, interval_s=1.0)
    sched = Scheduler(config)
    timed = _Timed()
    sched.reschedule = timed.wrap_round(sched.reschedule)  # type: ignore[method-assign]
    rng = random.Random(workload.seed)
    # Each program's step emits 4 events; its period sets the total rate.
    period_s = 4 * workload.programs / workload.events_per_s
    async with httpx.AsyncClient(transport=_fake_engine(workload.capacity_tokens)) as client:
        await sched.start(client)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_program(sched, timed, i, period_s, stop, random.Random(rng.random())))
            for i in range(workload.programs)
        ]
        warm = min(period_s, workload.duration_s / 2)
        await asyncio.sleep(warm)  # every program has started; measure from here
        timed.busy_s, timed.rounds_ms = 0.0, []
        cpu0, wall0, reschedules0 = time.process_time(), time.perf_counter(), sched.stats.reschedules
        await asyncio.sleep(workload.duration_s)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        rounds = sched.stats.reschedules - reschedules0
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        snap = sched.snapshot()
        await sched.close()
    ordered = sorted(timed.rounds_ms)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0
    return {
        "programs": workload.programs,
        "backends": workload.backends,
        "events_per_s": workload.events_per_s,
        "duration_s": workload.duration_s,
        "rounds": rounds,
        "rounds_per_s": round(rounds / wall, 1),
        "decide_ms_p50": round(statistics.median(ordered), 3) if ordered else 0.0,
        "decide_ms_p99": round(p99, 3),
        "decide_ms_max": round(ordered[-1], 3) if ordered else 0.0,
        "cpu_share": round(timed.busy_s / wall, 4),
        "process_cpu_share": round(cpu / wall, 4),  # the driver's 1,000 agents included
        "active_at_end": snap.active,
        "paused_at_end": snap.paused,
        "pauses": dict(sched.stats.pauses),
        "restores": sched.stats.restores,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m thunder_sched.bench control", description=__doc__)
    d = ControlWorkload()
    p.add_argument("--programs", type=int, default=d.programs)
    p.add_argument("--backends", type=int, default=d.backends)
    p.add_argument("--events-per-s", type=float, default=d.events_per_s)
    p.add_argument("--duration", type=float, default=d.duration_s)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    workload = ControlWorkload(args.programs, args.backends, args.events_per_s, args.duration, seed=args.seed)
    result = asyncio.run(run_control(workload))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
