"""One program-id rule (thunder_common.program_ids) at every entry point: the env manager, the MCP binding (URL
path, X-Program-Id, program tokens, the default program), the end route, the scheduler (body, header,
/programs/{id} paths, tool events) and `thunder serve`'s /p/{id}/v1. Each accepts the same ids and refuses
the same ids, with the same typed error or a 400 that names the rule. No Docker, no vLLM: the ASGI apps are
called directly and the manager runs on the in-memory backend."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Scope

from mcp_server import ServerConfig
from mcp_server.auth import BearerAuthMiddleware
from mcp_server.binding import SCOPE_STATE_KEY
from mcp_server.config import HttpConfig
from mcp_server.end_route import END_PATH, ProgramEndRoute
from mcp_server.programs import ProgramRegistry
from thunder_common.program_ids import PROGRAM_ID_RULE, InvalidProgramIdError, check_program_id, is_program_id
from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_sched.app import create_app
from thunder_sched.config import SchedulerConfig
from thunder_sched.errors import BadRequestError
from thunder_sched.proxy import take_program_id
from thunder_serve.routing import ProgramScopedApi

from ..fakes import MemoryBackend

GOOD = [
    "a",
    "7",
    "agent-1",
    "run-1",  # the mini-swe-agent adapter's example
    str(uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF)),  # a Claude Code session id
    "session-" + "0" * 24,  # what an MCP session without a named program stands for
    "anon-" + "f" * 32,  # the scheduler's id for a request that names no program
    "user@host:job.1+retry_2",
    "x" * 128,
]
BAD = [
    "",
    " ",
    "bad id",
    "a/b",
    "../etc",
    ".hidden",
    "-flag",
    "x" * 129,
    "x" * 300,
    "a\n",  # a trailing newline: the old MCP regex (`$`) let it through
    "a\nb",
    "a\0b",
    "a,b",
    "a=b",
    "a%2Fb",
    "é",
    "a\tb",
]
TOKEN = "unit-ids-token-" + "0123456789abcdef"
SCHED = "http://fake-vllm"

# An id with "/" or an empty id is no single path segment: the router refuses it before any rule is applied.
PATH_BAD = [bad for bad in BAD if bad and "/" not in bad]


def test_the_rule_itself() -> None:
    assert all(is_program_id(good) and check_program_id(good) == good for good in GOOD)
    for bad in BAD:
        assert not is_program_id(bad)
        with pytest.raises(InvalidProgramIdError, match="invalid program id") as caught:
            check_program_id(bad, "in the URL")
        assert PROGRAM_ID_RULE in str(caught.value) and "in the URL" in str(caught.value)
        assert isinstance(caught.value, ValueError) and caught.value.program_id == bad
    assert not is_program_id(42) and not is_program_id(None)


# ---- thunder_env ----------------------------------------------------------------------------------------


@pytest.fixture
async def manager() -> AsyncIterator[EnvManager]:
    backend = MemoryBackend()
    manager = EnvManager(backend, ManagerConfig(namespace="unit-ids", min_free_memory_bytes=0))  # type: ignore[arg-type]
    try:
        yield manager
    finally:
        await manager.close()
    assert not backend.live


async def test_the_env_manager_acquires_for_the_same_ids(manager: EnvManager) -> None:
    spec = SandboxSpec(image="thunder/base:latest")
    for good in GOOD:
        lease = await manager.acquire(good, spec)
        assert lease.program_id == good
        await manager.end_program(good)
    for bad in BAD:
        with pytest.raises(InvalidProgramIdError, match="invalid program id"):
            await manager.acquire(bad, spec)
    assert manager.sandboxes() == []


# ---- mcp_server -----------------------------------------------------------------------------------------


async def _call(
    app: ASGIApp, method: str, path: str, headers: dict[str, str] | None = None, json_body: object = None
) -> tuple[int, Any]:
    """One request straight into an ASGI app (raw bytes, so even a header with a newline reaches it)."""
    raw = [(b"authorization", f"Bearer {TOKEN}".encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("utf-8")) for k, v in (headers or {}).items()]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [*raw, (b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[Message] = []
    if json_body is None and method == "POST":
        json_body = {"kind": "tool_start", "tool": "sandbox_exec"}  # a tool event
    body = b"" if json_body is None else json.dumps(json_body).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload) if payload else None


def _recording() -> tuple[ASGIApp, list[Scope]]:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app, seen


async def test_the_mcp_binding_by_url_path_and_header() -> None:
    inner, seen = _recording()
    app = BearerAuthMiddleware(inner, {TOKEN: None})
    for good in GOOD:
        assert (await _call(app, "POST", f"/p/{good}/mcp"))[0] == 200
        assert (await _call(app, "POST", "/mcp", {"X-Program-Id": good}))[0] == 200
    assert [s["state"][SCOPE_STATE_KEY] for s in seen] == [good for good in GOOD for _ in range(2)]
    for bad in PATH_BAD:
        status, body = await _call(app, "POST", f"/p/{bad}/mcp")
        assert status == 400 and "invalid program id" in body["message"], bad
    for bad in [b for b in BAD if b]:  # an empty header names no program
        status, body = await _call(app, "POST", "/mcp", {"X-Program-Id": bad})
        assert status == 400 and "invalid program id" in body["message"], bad
    assert len(seen) == 2 * len(GOOD)


def test_the_mcp_config_takes_the_same_ids_for_program_tokens_and_the_default_program() -> None:
    for good in GOOD:
        assert HttpConfig(token=TOKEN, program_tokens={"p" * 16: good}).program_tokens == {"p" * 16: good}
        assert ServerConfig(default_program_id=good).default_program_id == good
    for bad in BAD:
        with pytest.raises(ValidationError, match="invalid program id"):
            HttpConfig(token=TOKEN, program_tokens={"p" * 16: bad})
        if bad:  # an empty default means none
            with pytest.raises(ValidationError, match="invalid program id"):
                ServerConfig(default_program_id=bad)


async def test_the_end_route_refuses_malformed_ids_before_looking_them_up(manager: EnvManager) -> None:
    programs = ProgramRegistry(manager, ServerConfig())
    app = Starlette(routes=[Route(END_PATH, endpoint=ProgramEndRoute(programs, (TOKEN,)), methods=["POST"])])
    for good in GOOD:
        status, body = await _call(app, "POST", f"/programs/{good}/end")
        assert status == 404 and body["error"] == "not_found", good  # a well-formed id this server never saw
    for bad in PATH_BAD:
        status, body = await _call(app, "POST", f"/programs/{bad}/end")
        assert status == 400 and body["error"] == "invalid_program_id" and PROGRAM_ID_RULE in body["message"], bad


# ---- thunder_sched --------------------------------------------------------------------------------------


def test_the_scheduler_takes_the_same_ids_from_the_body_and_the_header() -> None:
    for good in GOOD:
        assert take_program_id({"program_id": good}, {}) == good
        assert take_program_id({}, {"x-program-id": good}) == good
    for bad in BAD:
        with pytest.raises(BadRequestError, match="invalid program id"):
            take_program_id({"program_id": bad}, {})
        with pytest.raises(BadRequestError, match="invalid program id"):
            take_program_id({}, {"x-program-id": bad})


async def test_the_openai_and_messages_routes_refuse_the_same_ids_before_admitting_anything() -> None:
    app = create_app(SchedulerConfig(backends=(SCHED,)))
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for bad in BAD:
        for path in ("/v1/chat/completions", "/v1/messages"):
            status, body = await _call(app, "POST", path, json_body={**chat, "program_id": bad})
            assert status == 400 and "invalid program id" in json.dumps(body), (path, bad)
            if bad:  # an empty header names no program
                status, body = await _call(app, "POST", path, {"X-Program-Id": bad}, json_body=chat)
                assert status == 400 and "invalid program id" in json.dumps(body), (path, bad)
    assert app.state.scheduler.programs(include_terminated=True) == []


async def test_the_scheduler_routes_and_tool_events_take_the_same_ids() -> None:
    app = create_app(SchedulerConfig(backends=(SCHED,)))
    scheduler = app.state.scheduler
    for good in GOOD:
        assert (await _call(app, "GET", f"/programs/{good}"))[0] == 404  # well-formed, unknown
        assert (await _call(app, "POST", f"/programs/{good}/events"))[0] == 202
        assert (await _call(app, "GET", f"/programs/{good}"))[0] == 200
        assert (await _call(app, "POST", f"/programs/{good}/release"))[0] == 200
    for bad in PATH_BAD:
        routes = (("GET", "/programs/{}"), ("POST", "/programs/{}/events"), ("POST", "/programs/{}/release"))
        for method, path in routes:
            status, body = await _call(app, method, path.format(bad))
            assert status == 400 and "invalid program id" in body["error"]["message"], (path, bad)
    for bad in BAD:
        with pytest.raises(BadRequestError, match="invalid program id"):
            await scheduler.on_tool_event(SimpleNamespace(program_id=bad, kind="tool_start", tool="sandbox_exec"))
    assert {p.program_id for p in scheduler.programs(include_terminated=True)} == set(GOOD)


# ---- thunder_serve --------------------------------------------------------------------------------------


async def test_thunder_serve_program_scoped_api_takes_the_same_ids() -> None:
    inner, seen = _recording()
    app = Starlette(routes=[Route("/p/{program_id}/v1/{rest:path}", endpoint=ProgramScopedApi(inner))])
    for good in GOOD:
        assert (await _call(app, "POST", f"/p/{good}/v1/chat/completions"))[0] == 200
    assert [dict(s["headers"])[b"x-program-id"].decode() for s in seen] == GOOD
    for bad in PATH_BAD:
        status, body = await _call(app, "POST", f"/p/{bad}/v1/chat/completions")
        assert status == 400 and "invalid program id" in body["error"]["message"], bad
    assert len(seen) == len(GOOD)
