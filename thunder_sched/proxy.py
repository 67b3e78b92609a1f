"""Forwarding one completion request (OpenAI chat/completions, Anthropic messages) to the backend the
scheduler chose, streaming without buffering.

Every exit path (done, client gone, backend error, cancellation) ends the request's admission exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from thunder_common.program_ids import PROGRAM_HEADER
from thunder_sched.config import MODEL_ALIAS_DEFAULT
from thunder_sched.errors import (
    BadRequestError,
    NoBackendError,
    ReplicaError,
    anthropic_error_body,
    program_id_or_400,
)
from thunder_sched.program import Usage
from thunder_sched.program_ids import ProgramIdRule, program_id_from_rules
from thunder_sched.scheduler import Admission, Scheduler
from thunder_sched.sse import MessagesUsageTracker, UsageTracker, parse_messages_usage, parse_usage
from thunder_sched.tokens import Endpoint

log = logging.getLogger(__name__)

PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "messages": "/v1/messages",
}
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# Headers a backend may need to answer alike; anthropic-* select API versions and betas (vLLM ignores them).
_FORWARDED_HEADERS = ("x-request-id", "anthropic-version", "anthropic-beta")
_AUTH_HEADERS = ("authorization", "x-api-key")  # secrets meant for this proxy: forwarded only when configured
T = TypeVar("T")


class ClientGoneError(Exception):
    """The client disconnected before a response started."""


def forward_headers(headers: Mapping[str, str], *, forward_auth: bool = False) -> dict[str, str]:
    out = {"content-type": "application/json"}
    for name in _FORWARDED_HEADERS + (_AUTH_HEADERS if forward_auth else ()):
        if name in headers:
            out[name] = headers[name]
    return out


def apply_model_alias(body: dict[str, Any], aliases: Mapping[str, str]) -> None:
    """Rename the requested model to the backend's served one (exact name first, then the default)."""
    model = body.get("model")
    if not aliases or not isinstance(model, str):
        return
    served = aliases.get(model, aliases.get(MODEL_ALIAS_DEFAULT))
    if served is not None:
        body["model"] = served


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


def _openai_error_event(message: str) -> bytes:
    error = {"error": {"message": message, "type": ReplicaError.error_type, "code": ReplicaError.status_code}}
    return f"data: {json.dumps(error)}\n\n".encode()


def _anthropic_error_event(message: str) -> bytes:
    return f"event: error\ndata: {json.dumps(anthropic_error_body('api_error', message))}\n\n".encode()


def _openai_usage(body: Any) -> Usage | None:
    return parse_usage(body.get("usage")) if isinstance(body, dict) else None


def _messages_usage(body: Any) -> Usage | None:
    return parse_messages_usage(body.get("usage")) if isinstance(body, dict) else None


_USAGE_OF_BODY: dict[Endpoint, Callable[[Any], Usage | None]] = {
    "chat": _openai_usage,
    "completion": _openai_usage,
    "messages": _messages_usage,
}


async def read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def take_program_id(
    body: dict[str, Any], headers: Mapping[str, str], rules: Sequence[ProgramIdRule] = ()
) -> str | None:
    """`program_id` from the body (what `extra_body` sends; removed before forwarding) or X-Program-Id, else
    what the first matching agent-id rule finds (thunder_sched/program_ids.py)."""
    from_body = body.pop("program_id", None)
    from_header = headers.get(PROGRAM_HEADER)
    if from_body is not None and not isinstance(from_body, str | int):
        raise BadRequestError("program_id must be a string")
    pid = str(from_body) if from_body is not None else from_header
    if from_body is not None and from_header is not None and str(from_body) != from_header:
        raise BadRequestError(f"program_id {from_body!r} in the body differs from X-Program-Id {from_header!r}")
    if pid is None:
        pid = program_id_from_rules(rules, body, headers)
    return None if pid is None else program_id_or_400(pid)


async def until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client goes away first (a held request must not outlive it)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGoneError
    finally:
        for t in (watcher, task):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t


async def open_upstream(
    scheduler: Scheduler,
    program_id: str | None,
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: dict[str, str],
    query: str = "",
) -> tuple[Admission, httpx.Response]:
    """Admit the request (waiting while its program is paused) and open the upstream response.
    A refused connection marks the backend down and retries on another one: nothing was sent yet."""
    payload = json.dumps(body).encode()
    last_error = "no attempt"
    for _ in range(len(scheduler.config.backends) + 1):
        admission = await scheduler.admit(program_id, endpoint, body)
        url = with_query(admission.backend + PATHS[endpoint], query)
        try:
            request = scheduler.client.build_request("POST", url, content=payload, headers=headers)
            response = await scheduler.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            scheduler.finish(admission, usage=None, completed=False, backend_error=last_error, definitive=True)
            continue
        except httpx.HTTPError as exc:
            scheduler.finish(admission, usage=None, completed=False, backend_error=f"{type(exc).__name__}: {exc}")
            raise ReplicaError(admission.backend, f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            scheduler.finish(admission, usage=None, completed=False)
            raise
        return admission, response
    raise NoBackendError(f"every backend refused the connection; last error: {last_error}")


async def complete(
    scheduler: Scheduler, admission: Admission, upstream: httpx.Response, endpoint: Endpoint
) -> Response:
    """Non-streaming: relay the backend's bytes unchanged, reading `usage` on the way."""
    usage, completed, error = None, False, None
    try:
        content = await upstream.aread()
        if upstream.status_code == 200:
            with contextlib.suppress(ValueError):
                usage = _USAGE_OF_BODY[endpoint](json.loads(content))
            completed = True
        return Response(content, status_code=upstream.status_code, media_type=_media_type(upstream))
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise ReplicaError(admission.backend, error) from exc
    finally:
        scheduler.finish(admission, usage=usage, completed=completed, backend_error=error)
        await upstream.aclose()


def _media_type(upstream: httpx.Response) -> str:
    return upstream.headers.get("content-type", "application/json")


class FinalizingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always runs `finalize`, including when the client disconnects."""

    def __init__(self, content: AsyncIterator[bytes], *, finalize: Callable[[], Awaitable[None]], **kw: Any):
        super().__init__(content, **kw)
        self._finalize = finalize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finalize()


async def stream(
    scheduler: Scheduler, admission: Admission, upstream: httpx.Response, *, strip_usage: bool, endpoint: Endpoint
) -> Response:
    if upstream.status_code != 200:  # an error body, not a stream: relay it whole
        return await complete(scheduler, admission, upstream, endpoint)
    tracker: UsageTracker | MessagesUsageTracker
    if endpoint == "messages":
        tracker, error_event = MessagesUsageTracker(), _anthropic_error_event
    else:
        tracker, error_event = UsageTracker(strip_usage_chunk=strip_usage), _openai_error_event
    errors: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            seen = 0
            async for chunk in upstream.aiter_bytes():
                out = tracker.feed(chunk)
                if tracker.content_events > seen:  # the context grows while it generates
                    scheduler.progress(admission, tracker.content_events - seen)
                    seen = tracker.content_events
                if out:
                    yield out
            tail = tracker.flush()
            if tail:
                yield tail
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            log.warning("stream from %s broke: %s", admission.backend, errors[-1])
            yield error_event(f"backend {admission.backend} failed mid-stream: {errors[-1]}")

    iterator = body()

    async def finalize() -> None:
        scheduler.finish(
            admission,
            usage=tracker.usage,
            completion_estimate=tracker.content_events,
            completed=tracker.finished and not errors,
            backend_error=errors[0] if errors else None,
        )
        with contextlib.suppress(RuntimeError):  # already closed, or closed by the failing iteration
            await iterator.aclose()
        await upstream.aclose()  # tells vLLM to abort the request if it is still generating

    return FinalizingStreamingResponse(iterator, finalize=finalize, status_code=200, media_type=_media_type(upstream))


async def proxy_completion(scheduler: Scheduler, request: Request, endpoint: Endpoint) -> Response:
    body = await read_body(request)
    program_id = take_program_id(body, request.headers, scheduler.config.program_id_rules)
    apply_model_alias(body, scheduler.config.model_aliases)
    strip_usage = False
    if body.get("stream") is True and endpoint != "messages":  # Messages streams always carry usage
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise BadRequestError("stream_options must be an object")
        options = dict(options or {})
        if options.get("include_usage") is not True:
            strip_usage = True  # we need usage for exact token counts; the client did not ask for it
            options["include_usage"] = True
        body["stream_options"] = options
    headers = forward_headers(request.headers, forward_auth=scheduler.config.forward_auth)
    query = request.url.query
    admission, upstream = await unless_disconnected(
        request, open_upstream(scheduler, program_id, endpoint, body, headers, query)
    )
    if body.get("stream") is True:
        return await stream(scheduler, admission, upstream, strip_usage=strip_usage, endpoint=endpoint)
    return await unless_disconnected(request, complete(scheduler, admission, upstream, endpoint))


async def proxy_count_tokens(scheduler: Scheduler, request: Request) -> Response:
    """`/v1/messages/count_tokens`: no generation, so no program lifecycle; answered by a usable backend."""
    body = await read_body(request)
    take_program_id(body, request.headers)  # checked and removed like on the other routes; counts nothing
    apply_model_alias(body, scheduler.config.model_aliases)
    return await proxy_plain(
        scheduler, "POST", COUNT_TOKENS_PATH, request.headers, query=request.url.query, content=json.dumps(body)
    )


async def proxy_get(scheduler: Scheduler, path: str, headers: Mapping[str, str]) -> Response:
    """A plain GET (e.g. /v1/models) to the first usable backend."""
    return await proxy_plain(scheduler, "GET", path, headers)


async def proxy_plain(
    scheduler: Scheduler,
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    query: str = "",
    content: str | None = None,
) -> Response:
    """One request outside any program to the first usable backend, relayed whole."""
    usable = scheduler.backends.usable() or [b for b in scheduler.backends.backends.values() if b.healthy]
    if not usable:
        raise NoBackendError("no healthy backend to answer " + path)
    url = with_query(usable[0].url + path, query)
    try:
        resp = await scheduler.client.request(
            method, url, content=content, headers=forward_headers(headers, forward_auth=scheduler.config.forward_auth)
        )
    except httpx.HTTPError as exc:
        raise ReplicaError(usable[0].url, f"{type(exc).__name__}: {exc}") from exc
    return Response(resp.content, status_code=resp.status_code, media_type=_media_type(resp))
