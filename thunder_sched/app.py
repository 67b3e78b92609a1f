"""The FastAPI app factory: OpenAI-compatible proxy routes plus program endpoints and metrics.

Embedding (combined with the env manager in one process):

    app = create_app(config, on_program_end=env_manager.end_program)
    env_manager.add_listener(get_scheduler(app).on_tool_event)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from thunder_sched.config import SchedulerConfig
from thunder_sched.errors import BadRequestError, SchedulerError, anthropic_error_body, anthropic_error_type
from thunder_sched.events import ToolEvent, ToolEventBody
from thunder_sched.metrics import make_registry
from thunder_sched.notifier import ProgramEndCallback
from thunder_sched.program import ProgramInfo
from thunder_sched.proxy import ClientGoneError, proxy_completion, proxy_count_tokens, proxy_get
from thunder_sched.scheduler import Scheduler


def get_scheduler(app: FastAPI) -> Scheduler:
    return app.state.scheduler


def _anthropic_error(exc: SchedulerError) -> JSONResponse:
    return JSONResponse(anthropic_error_body(anthropic_error_type(exc), str(exc)), status_code=exc.status_code)


def create_app(
    config: SchedulerConfig,
    *,
    on_program_end: ProgramEndCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the proxy. The scheduler exists at once (so listeners can be registered); its HTTP client,
    capacity reads and periodic loops live in the app's lifespan. `transport` is for tests."""
    scheduler = Scheduler(config, on_program_end=on_program_end)
    registry = make_registry(scheduler)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(connect=config.connect_timeout_s, read=config.request_timeout_s, write=60.0, pool=None)
        limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as client:
            await scheduler.start(client)
            try:
                yield
            finally:
                await scheduler.close()

    app = FastAPI(title="thunder-sched", lifespan=lifespan)
    app.state.scheduler = scheduler

    @app.exception_handler(SchedulerError)
    async def _scheduler_error(_: Request, exc: SchedulerError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": str(exc), "type": exc.error_type, "code": exc.status_code}},
            status_code=exc.status_code,
        )

    @app.exception_handler(ClientGoneError)
    async def _client_gone(_: Request, __: ClientGoneError) -> Response:
        return Response(status_code=499)  # nobody is listening; the lease is already finalized

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await proxy_completion(scheduler, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await proxy_completion(scheduler, request, "completion")

    # The Anthropic Messages API: the same program lifecycle; errors in Anthropic's shape, same status codes.
    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        try:
            return await proxy_completion(scheduler, request, "messages")
        except SchedulerError as exc:
            return _anthropic_error(exc)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        try:
            return await proxy_count_tokens(scheduler, request)
        except SchedulerError as exc:
            return _anthropic_error(exc)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await proxy_get(scheduler, "/v1/models", request.headers)

    @app.get("/health")
    async def health() -> JSONResponse:
        backends = [
            {"url": b.url, "healthy": b.healthy, "capacity_tokens": b.capacity, "last_error": b.last_error}
            for b in scheduler.backends.backends.values()
        ]
        ok = bool(scheduler.backends.usable())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "backends": backends}, status_code=200 if ok else 503
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/programs")
    async def programs(include_terminated: bool = False) -> list[ProgramInfo]:
        return scheduler.programs(include_terminated=include_terminated)

    @app.get("/programs/{program_id}")
    async def program(program_id: str) -> ProgramInfo:
        return scheduler.program(program_id)

    @app.post("/programs/{program_id}/release")
    async def release(program_id: str, notify: bool = True) -> ProgramInfo:
        # notify=false: the env side ended the program and asks for no program-end notification back.
        return scheduler.release(program_id, notify=notify)

    @app.post("/programs/{program_id}/events", status_code=202)
    async def events(program_id: str, event: ToolEventBody) -> dict[str, str]:
        if event.program_id is not None and event.program_id != program_id:
            raise BadRequestError(f"the event names program {event.program_id!r} but was posted to {program_id!r}")
        await scheduler.on_tool_event(
            ToolEvent(program_id=program_id, **event.model_dump(exclude={"program_id", "call_id"}))
        )
        return {"status": "accepted"}

    return app
