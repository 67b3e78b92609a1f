"""The incremental ledger agrees with a full recount through random request, tool and release sequences,
and the scheduler's cost per round does not grow with the number of programs."""

from __future__ import annotations

import asyncio
import random

import httpx

from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.events import ToolEvent
from thunder_sched.program import Usage
from thunder_sched.scheduler import Admission, Scheduler

URLS = ("http://e0.invalid", "http://e1.invalid")


def _engine(blocks: int) -> httpx.MockTransport:
    text = f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{blocks}"}} 1.0\n'
    return httpx.MockTransport(lambda _: httpx.Response(200, text=text))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ledger_matches_a_full_recount_through_random_operations() -> None:
    clock = Clock()
    for policy in (PolicyConfig(tau_s=5.0), PolicyConfig(time_decay=False, tool_aware=False)):
        config = SchedulerConfig(backends=URLS, tokenize_first_request=False, interval_s=3600, policy=policy)
        sched = Scheduler(config, clock=clock)
        rng = random.Random(7)
        async with httpx.AsyncClient(transport=_engine(64)) as client:  # 1,024 tokens per backend
            await sched.start(client)
            waiting: dict[str, asyncio.Task[Admission]] = {}
            running: dict[str, Admission] = {}
            for step in range(600):
                pid = f"p{rng.randrange(12)}"
                op = rng.random()
                if op < 0.25 and pid not in waiting and pid not in running:
                    user = {"role": "user", "content": "x" * rng.randrange(40, 2400)}
                    system = {"role": "system", "content": rng.choice(["s" * 800, "t" * 400])}  # shared prefixes
                    messages = [system, user] if rng.random() < 0.7 else [user]
                    body = {"messages": messages, "max_tokens": rng.randrange(1, 64)}
                    waiting[pid] = asyncio.create_task(sched.admit(pid, "chat", body))
                elif op < 0.3 and pid in running:
                    sched.progress(running[pid], rng.randrange(1, 20))  # streamed tokens
                elif op < 0.55 and pid in running:
                    admission = running.pop(pid)
                    usage = Usage(admission.estimated_tokens, rng.randrange(1, 40)) if rng.random() < 0.8 else None
                    sched.finish(admission, usage=usage, completed=usage is not None)
                elif op < 0.65:
                    command = rng.choice(["pytest", "ls", "sleep"])
                    await sched.on_tool_event(ToolEvent(kind="tool_start", program_id=pid, command=command))
                elif op < 0.8:
                    d = rng.choice([0.1, 0.3, 20.0])
                    await sched.on_tool_event(ToolEvent(kind="tool_end", program_id=pid, command="ls", duration_s=d))
                elif op < 0.82 and pid not in waiting and pid not in running:
                    try:
                        sched.release(pid)
                    except Exception:  # unknown program: fine
                        pass
                elif op < 0.95:
                    clock.now += rng.choice([0.1, 1.0, 5.0])
                    sched.tick()
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                for wpid, task in list(waiting.items()):
                    if task.done():
                        del waiting[wpid]
                        if task.exception() is None:
                            running[wpid] = task.result()
                assert sched.ledger_problems() == [], f"step {step}"
            for task in waiting.values():
                task.cancel()
            await asyncio.gather(*waiting.values(), return_exceptions=True)
            assert sched.ledger_problems() == []
            # The sequence exercised what matters: pauses (several reasons) and restores.
            assert sched.stats.restores > 5 and sum(sched.stats.pauses.values()) > 5, sched.stats
            await sched.close()
