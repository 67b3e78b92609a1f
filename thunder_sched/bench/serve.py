"""Run an ASGI app (the scheduler) under uvicorn on a free loopback port, inside the current event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn

from thunder_sched.app import create_app
from thunder_sched.config import SchedulerConfig


class _EmbeddedServer(uvicorn.Server):
    """Leaves signal handling to the host program (uvicorn would otherwise swallow Ctrl-C)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Yields the base URL; the app's lifespan runs inside. Real sockets: streaming and disconnects work."""
    server = _EmbeddedServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("the app exited during startup")
                await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


@asynccontextmanager
async def running_scheduler(config: SchedulerConfig) -> AsyncIterator[str]:
    async with serving(create_app(config)) as url:
        yield url
