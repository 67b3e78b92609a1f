"""A synchronous face for the async MCP client, for agents whose loop is synchronous (mini-swe-agent).

The MCP session lives on a private event loop in a daemon thread; each call is submitted to that loop and
waited for. `close()` ends the session and stops the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import Any

from ..errors import AdapterError
from .mcp_client import ToolClient, connect

CONNECT_TIMEOUT_S = 60.0


class SyncToolClient:
    def __init__(self, url: str, token: str, *, call_timeout_s: float = 3600.0) -> None:
        self._call_timeout_s = call_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="thunder-mcp-client", daemon=True)
        self._thread.start()
        self._ready: concurrent.futures.Future[ToolClient] = concurrent.futures.Future()
        self._stop = asyncio.Event()
        self._session = asyncio.run_coroutine_threadsafe(self._hold(url, token), self._loop)
        try:
            self._tools = self._ready.result(CONNECT_TIMEOUT_S)
        except BaseException as exc:
            self.close()
            raise AdapterError(f"cannot open an MCP session at {url}: {exc!r}") from exc
        self._closed = False

    async def _hold(self, url: str, token: str) -> None:
        # Entered and left in this one task: the SDK's transport keeps anyio cancel scopes.
        try:
            async with connect(url, token) as tools:
                self._ready.set_result(tools)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """Call a tool and wait for its structured result (`ToolCallError` on a tool error)."""
        future = asyncio.run_coroutine_threadsafe(self._tools.call(tool, **arguments), self._loop)
        return future.result(self._call_timeout_s)

    def close(self) -> None:
        """End the MCP session and stop the loop thread. Idempotent."""
        if getattr(self, "_closed", False) or not self._thread.is_alive():
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._stop.set)
        try:
            with contextlib.suppress(Exception):  # closing: a broken session already failed its calls
                self._session.result(30.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30.0)
            self._loop.close()
