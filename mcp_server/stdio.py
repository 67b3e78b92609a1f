"""The stdio transport: one session per process; when it closes, the process's program ends."""

from __future__ import annotations

from .server import ThunderServer


async def run_stdio(server: ThunderServer) -> None:
    """Serve on stdin/stdout until the client closes stdin, then end every program of this server."""
    try:
        await server.run_stdio_async()
    finally:
        await server.aclose()
