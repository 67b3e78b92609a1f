"""The streamable HTTP app: ``/mcp`` and ``/p/{program_id}/mcp`` behind a bearer token.

``create_http_app`` returns a Starlette app whose lifespan runs the SDK's session manager and, on
shutdown, ends every program. It also serves ``POST /programs/{program_id}/end`` for a separately running
scheduler's notifier (``end_route.py``). To mount it inside another app (``thunder serve``), enter
``http_lifespan(app)`` in the parent's lifespan: Starlette does not run a mounted app's lifespan.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import BearerAuthMiddleware
from .binding import SCOPE_STATE_KEY, SESSION_HEADER, session_program_id
from .config import HttpConfig
from .end_route import END_PATH, ProgramEndRoute
from .programs import ProgramRegistry
from .server import ThunderServer

MCP_PATH = "/mcp"
PROGRAM_MCP_PATH = "/p/{program_id}/mcp"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def transport_security(http: HttpConfig) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check, always on: loopback names, the bound host, and configured extras."""
    hosts = list(dict.fromkeys((*_LOOPBACK_HOSTS, _host_for_header(http.host))))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{h}:*" for h in hosts] + [*hosts, *http.allowed_hosts],
        allowed_origins=[f"http://{h}:*" for h in hosts] + list(http.allowed_origins),
    )


def create_http_app(server: ThunderServer, http: HttpConfig) -> Starlette:
    """The ASGI app serving ``server`` over streamable HTTP with ``http``'s token(s)."""
    server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=transport_security(http),
        session_idle_timeout=http.session_idle_timeout_s,
        max_request_body_size=http.max_request_body_bytes,
        host=http.host,
    )
    session_manager = server.session_manager  # made by the call above; we route to it ourselves
    endpoint = StreamableHTTPASGIApp(session_manager)
    tokens: dict[str, str | None] = {http.token: None, **http.program_tokens}
    server.programs.configure(http.program_tokens.values())  # callers may share with these programs

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            async with session_manager.run():
                yield
        finally:
            await server.aclose()

    # Outermost first: authenticate and bind, then watch for closed sessions. Per route: the program-end
    # route checks its own tokens (the notifier token must not reach the MCP endpoints).
    mcp_middleware = [
        Middleware(BearerAuthMiddleware, tokens=tokens, program_headers=http.program_headers),
        Middleware(SessionEndMiddleware, programs=server.programs),
    ]
    end_tokens = (http.token, *((http.notifier_token,) if http.notifier_token else ()))
    return Starlette(
        routes=[
            Route(MCP_PATH, endpoint=endpoint, middleware=mcp_middleware),
            Route(PROGRAM_MCP_PATH, endpoint=endpoint, middleware=mcp_middleware),
            Route(END_PATH, endpoint=ProgramEndRoute(server.programs, end_tokens), methods=["POST"]),
        ],
        lifespan=lifespan,
    )


class SessionEndMiddleware:
    """A client that closes its MCP session (HTTP DELETE) ends the program that session stood for.

    Only programs bound to the session itself (no program named by path, header or token): an explicitly
    named program may span sessions, and ends by program_end or its idle timeout.
    """

    def __init__(self, app: ASGIApp, programs: ProgramRegistry) -> None:
        self.app = app
        self.programs = programs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "DELETE":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        named = (scope.get("state") or {}).get(SCOPE_STATE_KEY)
        session = headers.get(SESSION_HEADER)
        if status < 300 and not named and session:
            program_id = session_program_id(session)
            if self.programs.get(program_id) is not None:
                await self.programs.end(program_id, "its MCP session was closed")


def http_lifespan(app: Starlette) -> contextlib.AbstractAsyncContextManager[None]:
    """The lifespan of an app from ``create_http_app``, for a parent app that mounts it."""
    return app.router.lifespan_context(app)  # type: ignore[return-value]


def _host_for_header(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"  # bound to every interface: other names must be listed in allowed_hosts
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
