"""The combined server: scheduler, MCP server and one env manager in one ASGI app, on one event loop.

    async with open_combined(config) as combined:      # config.sandbox_backend + started env manager
        ...serve combined.app (uvicorn runs its lifespan: scheduler client and loops, MCP sessions)

Routes: `/v1/*`, `/health`, `/programs*` (the scheduler's app), `/p/{program_id}/v1/*` (the same, program
named in the URL), `/mcp` and `/p/{program_id}/mcp` (the MCP app, behind its bearer token), `/metrics` (both
sides), `/thunder/status` (JSON, see status.py).

Tokens (`ControlAuth`, as `Authorization: Bearer` or, for Anthropic clients, `x-api-key`): `/programs*`,
`/thunder/status` and `/metrics` reveal or change program state and need the server token; a program
token reaches only `/programs/<its program>*`; the read-only metrics token only `GET /metrics`.
`/v1/*` and `/health` need none (see docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_server import HttpConfig, ProgramRegistry, ThunderServer, build_server, create_http_app, http_lifespan
from thunder_common.asgi import send_json
from thunder_env import EnvManager
from thunder_env.backend import SandboxBackend
from thunder_env.backend_factory import make_backend
from thunder_sched.app import create_app, get_scheduler
from thunder_sched.scheduler import Scheduler

from .config import CombinedConfig
from .link import ProgramLink
from .metrics import combined_registry
from .routing import PROGRAM_API_PATH, ProgramScopedApi
from .status import StatusReport, build_status

STATUS_PATH = "/thunder/status"
METRICS_PATH = "/metrics"
PROGRAMS_PATH = "/programs"


@dataclass(eq=False)
class CombinedServer:
    config: CombinedConfig
    scheduler: Scheduler
    manager: EnvManager
    registry: ProgramRegistry
    mcp: ThunderServer
    link: ProgramLink
    app: Starlette
    started_at: float

    async def status(self, *, disk: bool = True) -> StatusReport:
        return await build_status(
            self.scheduler, self.manager, self.registry, self.link, started_at=self.started_at, disk=disk
        )


def build_combined(
    config: CombinedConfig, manager: EnvManager, *, transport: httpx.AsyncBaseTransport | None = None
) -> CombinedServer:
    """Wire the components around a started manager. `transport` (tests) replaces the scheduler's network."""

    async def on_program_end(program_id: str) -> None:
        await link.on_scheduler_end(program_id)

    sched_app = create_app(config.scheduler, on_program_end=on_program_end, transport=transport)
    scheduler = get_scheduler(sched_app)
    link = ProgramLink(
        scheduler, manager, prepare_on_restore=config.prepare_on_restore, prepare_ahead=config.prepare_ahead
    )
    manager.add_listener(scheduler.on_tool_event)  # tool events flow in-process to the scheduler
    # Programs the scheduler tracks are left to its inactivity timer (it sees their LLM requests and tool events).
    registry = ProgramRegistry(manager, config.server, idle_guard=link.live_in_scheduler)
    link.attach(registry)
    mcp = build_server(manager, config.server, programs=registry)
    mcp_app = create_http_app(mcp, config.http)
    metrics = combined_registry(scheduler, manager, registry, link)
    combined: CombinedServer

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Exit order: MCP first (its registry ends every program, releasing them in the scheduler while
        # the scheduler still runs), then the link, then the scheduler (it waits for its end notifications).
        async with sched_app.router.lifespan_context(sched_app):
            watcher = asyncio.create_task(link.watch_queue(config.queue_check_s), name="thunder-queue-head")
            try:
                async with http_lifespan(mcp_app):
                    yield
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await link.close()

    async def status(request: Request) -> JSONResponse:
        disk = request.query_params.get("disk", "1").lower() not in ("0", "false", "no")
        report = await combined.status(disk=disk)
        return JSONResponse(report.model_dump(mode="json"))

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    mcp_paths = ("/mcp", "/mcp/", "/p/{program_id}/mcp", "/p/{program_id}/mcp/")
    app = Starlette(
        routes=[
            Route(STATUS_PATH, status, methods=["GET"]),
            Route(METRICS_PATH, prometheus, methods=["GET"]),
            *(Route(path, mcp_app) for path in mcp_paths),
            Route(PROGRAM_API_PATH, ProgramScopedApi(sched_app)),
            Mount("/", app=sched_app),
        ],
        middleware=[Middleware(ControlAuth, http=config.http)],
        lifespan=lifespan,
    )
    combined = CombinedServer(config, scheduler, manager, registry, mcp, link, app, time.monotonic())
    return combined


class ControlAuth:
    """The bearer token on every route that reveals or changes program state.

    `/programs` and `/programs/*` (list, inspect, release, events), `/thunder/status` and `/metrics`:
    401 without a valid token, 403 when the token does not reach the route. The server token reaches all;
    a program token only `/programs/<its program>` and below; the metrics token only `GET /metrics`.
    Other routes pass untouched (the MCP endpoints check tokens themselves). Paths are the decoded ones the
    router matches, so no spelling of a guarded route gets past.
    """

    def __init__(self, app: ASGIApp, http: HttpConfig) -> None:
        self.app = app
        self._tokens: list[tuple[bytes, str]] = [(_digest(http.token), "server")]
        self._tokens += [(_digest(token), "program:" + program) for token, program in http.program_tokens.items()]
        if http.metrics_token is not None:
            self._tokens.append((_digest(http.metrics_token), "metrics"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _guarded_route(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        role = self._role(headers.get("authorization", ""), headers.get("x-api-key", ""))
        if role is None:
            await _deny(
                send, 401, "unauthorized",
                f"{scope.get('path')} needs the server's bearer token: send 'Authorization: Bearer <token>' "
                "or 'x-api-key: <token>' (thunder status: --token or THUNDER_TOKEN)",
            )  # fmt: skip
            return
        kind, program = route
        allowed = (
            role == "server"
            or (role == "metrics" and kind == "metrics" and scope.get("method") in ("GET", "HEAD"))
            or (kind == "programs" and program is not None and role == "program:" + program)
        )
        if not allowed:
            await _deny(send, 403, "forbidden", f"this token does not reach {scope.get('path')}")
            return
        await self.app(scope, receive, send)

    def _role(self, authorization: str, api_key: str) -> str | None:
        """The token's role, from `Authorization: Bearer` or, as Anthropic clients send it
        (ANTHROPIC_API_KEY), `x-api-key`; a Bearer header wins when both are sent."""
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer" and presented.strip():
            presented = presented.strip()
        elif not authorization and api_key.strip():
            presented = api_key.strip()
        else:
            return None
        digest = _digest(presented)
        found = None
        for expected, role in self._tokens:  # no early exit: time does not depend on which token matched
            if hmac.compare_digest(digest, expected):
                found = role
        return found


def _guarded_route(path: str) -> tuple[str, str | None] | None:
    """("metrics" | "status" | "programs", the program a /programs/<id> path names) or None: not guarded."""
    if path.rstrip("/") == METRICS_PATH:
        return "metrics", None
    if path == STATUS_PATH or path.startswith(STATUS_PATH + "/"):
        return "status", None
    if path == PROGRAMS_PATH or path.startswith(PROGRAMS_PATH + "/"):
        program = path[len(PROGRAMS_PATH) + 1 :].split("/", 1)[0]
        return "programs", program or None
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _deny(send: Send, status: int, error: str, message: str) -> None:
    extra = {"www-authenticate": 'Bearer realm="thunder"'} if status == 401 else None
    await send_json(send, status, {"error": error, "message": message}, extra)


@contextlib.asynccontextmanager
async def open_combined(
    config: CombinedConfig,
    *,
    backend: SandboxBackend | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[CombinedServer]:
    """A started env manager on `backend` (default: a new one from `config.sandbox_backend`, closed on exit) and the
    combined app around it. Serve `app` while inside; on exit every sandbox of the manager is destroyed."""
    own_backend = backend is None
    if backend is None:
        backend = make_backend(config.sandbox_backend)  # made here, on the running loop (its HTTP session needs one)
    try:
        manager = EnvManager(backend, config.manager)
        await manager.start()
        try:
            yield build_combined(config, manager, transport=transport)
        finally:
            await manager.close()
    finally:
        if own_backend:
            await backend.close()
