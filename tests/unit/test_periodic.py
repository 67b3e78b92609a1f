"""The one periodic-work loop (manager reaper and health check, disk-limit watch, MCP idle reaper)."""

from __future__ import annotations

import asyncio

from thunder_env.periodic import Periodic


async def test_a_failed_run_is_retried_and_stop_lets_a_run_in_progress_finish() -> None:
    runs: list[str] = []
    finishing = asyncio.Event()
    second_run = asyncio.Event()

    async def work() -> None:
        runs.append("run")
        if len(runs) == 1:
            raise RuntimeError("engine hiccup")  # logged; the next interval runs again
        second_run.set()
        await finishing.wait()
        runs.append("finished")

    periodic = Periodic(work, 0.01, "test work")
    periodic.start()
    periodic.start()  # idempotent: one loop
    await asyncio.wait_for(second_run.wait(), 5)
    stopping = asyncio.create_task(periodic.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the run in progress, never cuts it
    finishing.set()
    await stopping
    assert runs == ["run", "run", "finished"]
    await asyncio.sleep(0.05)
    assert runs == ["run", "run", "finished"]  # stopped: no further run
