"""The one way Thunder serves an ASGI app: uvicorn on the current event loop (no thread, no second loop),
started and waited for until it listens (`thunder-mcp --http`, `thunder serve`, the scheduler benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from .errors import ThunderError

STARTUP_TIMEOUT_S = 60.0
log = logging.getLogger(__name__)


class ServerStartError(ThunderError):
    """The server did not start listening (the port is in use, or the app's startup failed)."""


@dataclass(frozen=True)
class Running:
    url: str  # base URL, no trailing slash
    task: asyncio.Task[None]  # done when the server stopped (by itself, or because the block ended)
    server: uvicorn.Server  # `server.should_exit = True` asks it to stop (e.g. from a signal handler)


def base_url(server: uvicorn.Server, host: str) -> str:
    """The URL clients use: the real port (when 0 was asked) and a loopback name for wildcard binds."""
    port = server.servers[0].sockets[0].getsockname()[1]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits the process when it cannot bind or the app's startup fails
        log.error("uvicorn stopped during startup (see its error above)")


@contextlib.asynccontextmanager
async def serving(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> AsyncIterator[Running]:
    """Serve `app` in the background while inside (its lifespan runs with it); stops gracefully on exit.

    Raises `ServerStartError` when it is not listening within `STARTUP_TIMEOUT_S`.
    """
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    # Signals stay with whoever owns the process (the CLI, pytest): uvicorn would re-raise a caught SIGTERM
    # once stopped, killing the process before its owner cleans up. This server stops when the block ends.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(_serve(server), name="thunder-uvicorn")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    while not server.started and not task.done() and loop.time() < deadline:  # noqa: ASYNC110 (uvicorn offers only a flag)
        await asyncio.sleep(0.05)
    if not server.started:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 30)
        raise ServerStartError(f"the server did not start on {host}:{port}: the port is in use or its startup failed")
    try:
        yield Running(base_url(server, host), task, server)
    finally:
        server.should_exit = True
        await task
