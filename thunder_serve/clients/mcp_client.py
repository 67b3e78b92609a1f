"""A small async MCP client over streamable HTTP (the official SDK's `Client`) for the demo and the adapters.

Enter and leave `connect(...)` in the same task: the SDK's transport holds anyio cancel scopes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ..errors import AdapterError


class ToolCallError(AdapterError):
    """A tool answered with an error (its message is what a model would read)."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(f"{tool} failed: {message}")
        self.tool = tool
        self.message = message


class ToolClient:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """Call a tool; its structured result, or `ToolCallError` with the text the server returned."""
        result = await self._client.call_tool(tool, arguments)
        text = "\n".join(getattr(block, "text", "") for block in result.content)
        if result.is_error:
            raise ToolCallError(tool, text)
        if result.structured_content is None:
            raise ToolCallError(tool, f"no structured result (text: {text[:200]!r})")
        return dict(result.structured_content)


def program_url(server_url: str, program_id: str) -> str:
    """The MCP endpoint bound to one program: `<server>/p/<program_id>/mcp`."""
    return f"{server_url.rstrip('/')}/p/{program_id}/mcp"


@contextlib.asynccontextmanager
async def connect(url: str, token: str, *, read_timeout_s: float = 600.0) -> AsyncIterator[ToolClient]:
    """An MCP session at `url` with the bearer token; closed (and the HTTP client with it) on exit."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=read_timeout_s)
    )

    @contextlib.asynccontextmanager
    async def transport() -> AsyncIterator[Any]:
        async with http, streamable_http_client(url, http_client=http) as streams:
            yield streams

    async with Client(transport()) as client:
        yield ToolClient(client)
