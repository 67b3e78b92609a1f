"""The combined app's routes under uvicorn, without Docker or vLLM: the scheduler's API at /v1 and under
/p/{program_id}/v1, the MCP endpoints behind the token, /thunder/status, /metrics, and a shutdown that ends
every program on both sides. The backend is a small OpenAI-like fake (the real vLLM is in tests/vllm)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from mcp_server import HttpConfig
from thunder_common.serving import serving
from thunder_env import EnvManager, ManagerConfig
from thunder_sched.config import SchedulerConfig
from thunder_sched.policy import Status
from thunder_serve.app import build_combined
from thunder_serve.clients.mcp_client import connect, program_url
from thunder_serve.config import CombinedConfig
from thunder_serve.status import StatusReport

from ..fakes import MemoryBackend

BACKEND = "http://fake-vllm"
TOKEN = "unit-token-" + "0123456789abcdef"
PROGRAM_TOKEN = "unit-program-token-" + "0123456789abcdef"
METRICS_TOKEN = "unit-metrics-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class FakeVllm:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/metrics":
            return httpx.Response(200, text='vllm:cache_config_info{block_size="16",num_gpu_blocks="256"} 1.0\n')
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake", "max_model_len": 4096}]})
        if path == "/tokenize":
            return httpx.Response(200, json={"count": 10})
        if path == "/v1/chat/completions":
            body = json.loads(request.content)
            self.bodies.append(body)
            usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
            choice = {"index": 0, "message": {"role": "assistant", "content": "ok ok"}, "finish_reason": "stop"}
            return httpx.Response(200, json={"choices": [choice], "usage": usage})
        if path == "/v1/messages":  # the shape of vLLM's Anthropic Messages API answer
            self.bodies.append(json.loads(request.content))
            self.headers.append(request.headers)
            usage = {"input_tokens": 10, "output_tokens": 2}
            content = [{"type": "text", "text": "ok ok"}]
            return httpx.Response(200, json={"id": "m", "type": "message", "content": content, "usage": usage})
        if path == "/v1/messages/count_tokens":
            return httpx.Response(200, json={"input_tokens": 10})
        return httpx.Response(404)


@dataclass
class Served:
    url: str
    http: httpx.AsyncClient
    vllm: FakeVllm
    combined: Any


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    vllm = FakeVllm()
    backend = MemoryBackend()
    config = CombinedConfig(
        scheduler=SchedulerConfig(backends=(BACKEND,), interval_s=0.2),
        http=HttpConfig(port=0, token=TOKEN, program_tokens={PROGRAM_TOKEN: "agent-5"}, metrics_token=METRICS_TOKEN),
        manager=ManagerConfig(namespace="unit-app", min_free_memory_bytes=0),
    )
    manager = EnvManager(backend, config.manager)  # type: ignore[arg-type]
    await manager.start()
    combined = build_combined(config, manager, transport=httpx.MockTransport(vllm))
    try:
        async with serving(combined.app) as running, httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            yield Served(running.url, http, vllm, combined)
        # Shutdown ended every MCP program, releasing it in the scheduler too.
        assert combined.registry.programs() == []
        assert all(p.terminated_reason == "released" for p in combined.scheduler.programs(include_terminated=True)
                   if p.program_id.startswith("tools-"))  # fmt: skip
    finally:
        await manager.close()
    assert not backend.live


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


async def test_the_openai_api_with_the_program_in_the_url_or_the_body(served: Served) -> None:
    response = await served.http.post("/p/agent-1/v1/chat/completions", json=chat())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "ok ok"
    response = await served.http.post("/v1/chat/completions", json=chat(program_id="agent-2"))
    assert response.status_code == 200
    assert all("program_id" not in body for body in served.vllm.bodies)  # never forwarded to vLLM
    steps = {p.program_id: p.steps for p in served.combined.scheduler.programs()}
    assert steps == {"agent-1": 1, "agent-2": 1}
    assert (await served.http.get("/p/agent-1/v1/models")).json()["data"][0]["id"] == "fake"
    assert (await served.http.get("/health")).json()["status"] == "ok"


async def test_conflicting_or_malformed_program_ids_in_the_url_are_refused(served: Served) -> None:
    conflict = await served.http.post("/p/agent-1/v1/chat/completions", json=chat(), headers={"X-Program-Id": "x"})
    assert conflict.status_code == 400 and "X-Program-Id" in conflict.json()["error"]["message"]
    body_conflict = await served.http.post("/p/agent-1/v1/chat/completions", json=chat(program_id="other"))
    assert body_conflict.status_code == 400
    malformed = await served.http.post("/p/bad%20id/v1/chat/completions", json=chat())
    assert malformed.status_code == 400 and "invalid program id" in malformed.json()["error"]["message"]
    assert served.vllm.bodies == [] and served.combined.scheduler.programs() == []


async def test_mcp_is_served_behind_the_token_and_shares_the_program(served: Served) -> None:
    unauthorized = await served.http.post("/p/agent-3/mcp", json={})
    assert unauthorized.status_code == 401
    async with connect(program_url(served.url, "agent-3"), TOKEN) as tools:
        listed = await tools.call("sandbox_list")
        assert listed == {"program_id": "agent-3", "sandboxes": []}
        await served.http.post("/p/agent-3/v1/chat/completions", json=chat())
        status = StatusReport.model_validate((await served.http.get("/thunder/status?disk=0", headers=AUTH)).json())
        (program,) = status.programs
        assert (program.program_id, program.status, program.phase) == ("agent-3", "active", "acting")
        assert program.mcp and program.steps == 1
        assert program.tokens == 12 and program.backend == BACKEND
        await tools.call("program_end")
    info = served.combined.scheduler.program("agent-3")
    assert info.status is Status.TERMINATED and info.terminated_reason == "released"
    assert served.combined.link.envs.end_calls == {"agent-3": 1}


async def test_metrics_cover_both_sides(served: Served) -> None:
    await served.http.post("/p/agent-4/v1/chat/completions", json=chat())
    text = (await served.http.get("/metrics", headers=AUTH)).text
    for name in ("thunder_programs{", "thunder_restores_total", "thunder_env_sandboxes", "thunder_mcp_programs"):
        assert name in text, name
    assert 'thunder_env_prepared_total{outcome="ready_at_acquire"}' in text
    assert 'thunder_program_ends_total{side="env"}' in text


async def test_shutdown_ends_every_program_still_open(served: Served) -> None:
    async with connect(program_url(served.url, "tools-1"), TOKEN) as tools:
        await tools.call("sandbox_list")
        await served.http.post("/p/tools-1/v1/chat/completions", json=chat())
    assert served.combined.registry.programs() == ["tools-1"]
    assert served.combined.scheduler.program("tools-1").status is not Status.TERMINATED
    # The fixture's teardown stops the server and checks that it ended on both sides.


GUARDED = [
    ("GET", "/programs"), ("GET", "/programs/"), ("GET", "/programs/agent-1"), ("POST", "/programs/agent-1/release"),
    ("POST", "/programs/agent-1/events"), ("GET", "/thunder/status"), ("GET", "/thunder/status/"),
    ("GET", "/metrics"), ("GET", "/metrics/"), ("GET", "/%70rograms/agent-1"), ("POST", "/programs/agent-1%2Frelease"),
]  # fmt: skip


async def test_program_state_routes_need_the_token(served: Served) -> None:
    http = served.http
    await http.post("/p/agent-1/v1/chat/completions", json=chat())
    await http.post("/p/agent-5/v1/chat/completions", json=chat())
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": TOKEN}):
        for method, path in GUARDED:
            response = await http.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (headers, method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert served.combined.scheduler.program("agent-1").status is Status.ACTIVE  # nobody released it
    # The metrics token reads /metrics and nothing else.
    metrics = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert (await http.get("/metrics", headers=metrics)).status_code == 200
    for method, path in GUARDED[:7]:
        assert (await http.request(method, path, headers=metrics, json={})).status_code == 403, path
    # A program token reaches its own program only.
    scoped = {"Authorization": f"Bearer {PROGRAM_TOKEN}"}
    assert (await http.get("/programs/agent-5", headers=scoped)).json()["program_id"] == "agent-5"
    for method, path in GUARDED:
        assert (await http.request(method, path, headers=scoped, json={})).status_code == 403, path
    assert served.combined.scheduler.program("agent-1").status is Status.ACTIVE
    # The server token reaches all of it.
    assert {p["program_id"] for p in (await http.get("/programs", headers=AUTH)).json()} == {"agent-1", "agent-5"}
    assert (await http.get("/thunder/status?disk=0", headers=AUTH)).status_code == 200
    assert (await http.post("/programs/agent-1/release", headers=AUTH)).status_code == 200
    assert served.combined.scheduler.program("agent-1").status is Status.TERMINATED
    # The OpenAI API and /health stay open (a client would have to send its token to any LLM endpoint).
    assert (await http.get("/health")).status_code == 200


async def test_anthropic_clients_send_the_token_as_x_api_key_and_it_never_reaches_vllm(served: Served) -> None:
    http = served.http
    for headers in ({"x-api-key": "wrong-token-0123456789abcdef"}, {"x-api-key": ""}):
        assert (await http.get("/programs", headers=headers)).status_code == 401
    assert (await http.get("/programs", headers={"x-api-key": TOKEN})).status_code == 200
    scoped = {"x-api-key": PROGRAM_TOKEN}
    assert (await http.get("/programs/agent-5", headers=scoped)).status_code in (200, 404)
    assert (await http.get("/programs", headers=scoped)).status_code == 403
    message = {"model": "claude-x", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    secret = {"x-api-key": TOKEN, "Authorization": f"Bearer {TOKEN}"}
    response = await http.post("/p/agent-6/v1/messages?beta=true", json=message, headers=secret)
    assert response.status_code == 200, response.text
    assert served.combined.scheduler.program("agent-6").tokens == 12
    assert "x-api-key" not in served.vllm.headers[-1] and "authorization" not in served.vllm.headers[-1]
    assert (await http.post("/v1/messages/count_tokens", json=message)).json() == {"input_tokens": 10}
    malformed = await http.post("/p/bad%20id/v1/messages", json=message)
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
    assert malformed.json()["type"] == "error"


async def test_status_and_programs_never_show_mcp_session_ids(served: Served) -> None:
    headers = {**AUTH, "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }  # fmt: skip
    opened = await served.http.post("/mcp", json=init, headers=headers)
    session = opened.headers["mcp-session-id"]
    in_session = {**headers, "Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-06-18"}
    await served.http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=in_session)
    listed = await served.http.post(
        "/mcp", headers=in_session,
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sandbox_list", "arguments": {}}},
    )  # fmt: skip
    (program_id,) = served.combined.registry.programs()  # the session's own program
    assert program_id.startswith("session-") and program_id in listed.text
    for path in ("/thunder/status?disk=0", "/programs?include_terminated=true", "/metrics"):
        text = (await served.http.get(path, headers=AUTH)).text
        assert session not in text, path
    status = StatusReport.model_validate((await served.http.get("/thunder/status?disk=0", headers=AUTH)).json())
    assert [p.program_id for p in status.programs] == [program_id]
    assert session not in program_id
