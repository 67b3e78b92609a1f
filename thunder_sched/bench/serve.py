"""Run the scheduler under uvicorn on a free loopback port, inside the current event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from thunder_common.serving import serving
from thunder_sched.app import create_app
from thunder_sched.config import SchedulerConfig


@asynccontextmanager
async def running_scheduler(config: SchedulerConfig) -> AsyncIterator[str]:
    """Yields the base URL; the app's lifespan runs inside. Real sockets: streaming and disconnects work."""
    async with serving(create_app(config)) as running:
        yield running.url
