"""Proxy behaviour that does not need a real vLLM: body and header handling, usage parsing and stripping,
holding paused programs, tool events, release and expiry, metrics, and failover on a refused backend.
The backend is a small OpenAI-like fake; the real vLLM is exercised in tests/vllm/test_sched_*.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from thunder_sched.app import create_app, get_scheduler
from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.sse import UsageTracker

A, B = "http://backend-a", "http://backend-b"


@dataclass
class FakeVllm:
    """Counts one token per 4 prompt characters and answers `max_tokens` words."""

    num_blocks: int = 64
    block_size: int = 16
    bodies: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, generation waits for it

    def app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return PlainTextResponse(
                "# TYPE vllm:cache_config_info gauge\n"
                f'vllm:cache_config_info{{block_size="{self.block_size}",num_gpu_blocks="{self.num_blocks}"}} 1.0\n'
            )

        async def tokenize(request: Request) -> Response:
            body = await request.json()
            text = "".join(m["content"] for m in body.get("messages", [])) or body.get("prompt", "")
            return JSONResponse({"count": len(text) // 4 + 3, "tokens": [], "max_model_len": 4096})

        async def models(_: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

        async def chat(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            if self.gate is not None:
                await self.gate.wait()
            prompt = len("".join(m["content"] for m in body["messages"])) // 4 + 3
            n = body.get("max_tokens", 4)
            words = [f"w{i}" for i in range(n)]
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            if not body.get("stream"):
                return JSONResponse(
                    {
                        "id": "c1",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)}}],
                        "usage": usage,
                    }
                )

            async def events() -> AsyncIterator[bytes]:
                for w in words:
                    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": w}}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield f"data: {json.dumps({'id': 'c1', 'choices': [], 'usage': usage})}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(
            routes=[
                Route("/metrics", metrics),
                Route("/tokenize", tokenize, methods=["POST"]),
                Route("/v1/models", models),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )


class Routed(httpx.AsyncBaseTransport):
    """Sends each backend host to its fake; a host in `refused` refuses connections."""

    def __init__(self, fakes: dict[str, FakeVllm]) -> None:
        self.transports = {url: httpx.ASGITransport(app=f.app()) for url, f in fakes.items()}
        self.refused: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}"
        if base in self.refused:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.transports[base].handle_async_request(request)


@asynccontextmanager
async def proxy(
    fakes: dict[str, FakeVllm], *, ends: list[str] | None = None, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Routed, Any]]:
    async def on_end(pid: str) -> None:
        if ends is not None:
            ends.append(pid)

    transport = Routed(fakes)
    kw: dict[str, Any] = {"backends": tuple(fakes), "interval_s": 0.05, **overrides}
    app = create_app(SchedulerConfig(**kw), on_program_end=on_end, transport=transport)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy")
        async with client:
            yield client, transport, get_scheduler(app)


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **kw}


async def test_program_id_from_body_is_removed_before_forwarding_and_usage_is_exact() -> None:
    fake = FakeVllm()
    async with proxy({A: fake}) as (client, _, _):
        r = await client.post("/v1/chat/completions", json=chat("x" * 400, program_id="p1"))
        assert r.status_code == 200, r.text
        assert "program_id" not in fake.bodies[-1]
        info = (await client.get("/programs/p1")).json()
        assert info["tokens"] == 103 + 4 and info["tokens_exact"] is True
        assert info["phase"] == "acting" and info["status"] == "active" and info["steps"] == 1
        assert info["backend"] == A


async def test_program_id_from_header_and_conflicts_and_bad_bodies() -> None:
    async with proxy({A: FakeVllm()}) as (client, _, _):
        r = await client.post("/v1/chat/completions", json=chat("hi"), headers={"X-Program-Id": "h1"})
        assert r.status_code == 200
        assert (await client.get("/programs/h1")).json()["steps"] == 1
        r = await client.post("/v1/chat/completions", json=chat("hi", program_id="a"), headers={"X-Program-Id": "b"})
        assert r.status_code == 400 and "differs" in r.json()["error"]["message"]
        r = await client.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await client.post("/v1/chat/completions", json=[1, 2])
        assert r.status_code == 400
        r = await client.post("/v1/chat/completions", json=chat("hi", program_id="x" * 300))
        assert r.status_code == 400


async def test_stream_usage_is_requested_then_stripped_unless_the_client_asked() -> None:
    fake = FakeVllm()
    async with proxy({A: fake}) as (client, _, _):
        r = await client.post("/v1/chat/completions", json=chat("y" * 40, stream=True, program_id="s"))
        assert fake.bodies[-1]["stream_options"] == {"include_usage": True}
        assert '"usage"' not in r.text and r.text.endswith("data: [DONE]\n\n")
        assert r.text.count("data: ") == 5  # 4 content chunks + [DONE]
        info = (await client.get("/programs/s")).json()
        assert info["tokens"] == 13 + 4 and info["tokens_exact"]

        opts = {"include_usage": True}
        r = await client.post("/v1/chat/completions", json=chat("y", stream=True, stream_options=opts))
        assert '"usage"' in r.text


def test_usage_tracker_handles_split_chunks_and_crlf() -> None:
    t = UsageTracker(strip_usage_chunk=True)
    usage_event = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}\r\n\r\n'
    stream = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n' + usage_event + b"data: [DONE]\n\n"
    out = b"".join(t.feed(stream[i : i + 5]) for i in range(0, len(stream), 5)) + t.flush()
    assert out == b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: [DONE]\n\n'
    assert t.usage is not None and (t.usage.prompt_tokens, t.usage.completion_tokens) == (7, 2)
    assert t.finished and t.content_events == 1


async def test_request_without_program_id_is_a_one_step_program() -> None:
    ends: list[str] = []
    async with proxy({A: FakeVllm()}, ends=ends) as (client, _, _):
        r = await client.post("/v1/chat/completions", json=chat("anon"))
        assert r.status_code == 200
        assert (await client.get("/programs")).json() == []
        done = (await client.get("/programs", params={"include_terminated": True})).json()
        assert len(done) == 1 and done[0]["ephemeral"] and done[0]["status"] == "terminated"
    assert ends == []  # no environment to reclaim for an anonymous request


async def test_tool_events_over_http_and_in_process() -> None:
    async with proxy({A: FakeVllm()}) as (client, _, sched):
        await client.post("/v1/chat/completions", json=chat("x", program_id="t"))
        r = await client.post("/programs/t/events", json={"kind": "tool_start", "sandbox_id": "sb1", "tool": "bash"})
        assert r.status_code == 202
        info = (await client.get("/programs/t")).json()
        assert info["tools_running"] == 1 and info["sandboxes"] == ["sb1"] and info["last_tool"] == "bash"

        @dataclass
        class Event:  # what the env manager passes to the in-process listener
            kind: str
            program_id: str
            sandbox_id: str | None
            tool: str | None
            duration_s: float | None
            exit_code: int | None
            time: float | None

        await sched.on_tool_event(Event("tool_end", "t", "sb1", "bash", 1.5, 0, 0.0))
        info = (await client.get("/programs/t")).json()
        assert info["tools_running"] == 0 and info["last_tool_duration_s"] == 1.5 and info["last_exit_code"] == 0
        r = await client.post("/programs/t/events", json={"kind": "tool_exploded"})
        assert r.status_code == 422
        with pytest.raises(ValueError, match="kind"):
            await sched.on_tool_event(Event("nope", "t", None, None, None, None, None))


async def until_held(client: httpx.AsyncClient, program_id: str) -> dict[str, Any]:
    """The program's view once its request is held by the scheduler (or after ~2 s of polling)."""
    info: dict[str, Any] = {}
    for _ in range(100):
        await asyncio.sleep(0.02)
        r = await client.get(f"/programs/{program_id}")
        info = r.json() if r.status_code == 200 else {}
        if info.get("held"):
            break
    return info


async def test_paused_program_is_held_then_served_after_release_of_the_other() -> None:
    # 64 blocks x 16 = 1,024 tokens. "big" fills it (and, acting without decay, keeps it).
    ends: list[str] = []
    cfg = PolicyConfig(time_decay=False, min_running=0)  # memory admission alone
    async with proxy({A: FakeVllm()}, ends=ends, policy=cfg) as (client, _, _):
        r = await client.post("/v1/chat/completions", json=chat("z" * 3600, program_id="big"))
        assert r.status_code == 200
        held = asyncio.create_task(client.post("/v1/chat/completions", json=chat("w" * 800, program_id="small")))
        small = await until_held(client, "small")
        assert small["status"] == "paused" and small["held"] == 1 and not held.done()
        metrics = (await client.get("/metrics")).text
        assert "thunder_programs_waiting 1.0" in metrics
        released = (await client.post("/programs/big/release")).json()
        assert released["status"] == "terminated"
        r = await asyncio.wait_for(held, 5)
        assert r.status_code == 200
        assert (await client.get("/programs/small")).json()["status"] == "active"
        assert (await client.post("/programs/big/release")).status_code == 404
    assert ends == ["big"]


async def test_an_idle_engine_serves_a_waiting_program_at_once_by_default() -> None:
    # The same two programs with the default floor (one running request): "big" is acting and nothing runs,
    # so "small" is served straight away instead of waiting for room; "big" gives up its room.
    cfg = PolicyConfig(time_decay=False)
    async with proxy({A: FakeVllm()}, policy=cfg) as (client, _, sched):
        assert (await client.post("/v1/chat/completions", json=chat("z" * 3600, program_id="big"))).status_code == 200
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat("w" * 800, program_id="small")), 5)
        assert r.status_code == 200
        assert sched.stats.floor_restores == 1
        sched.reschedule()  # the next round brings the held load back in bounds: one of the two gives way
        statuses = sorted([(await client.get(f"/programs/{pid}")).json()["status"] for pid in ("big", "small")])
        assert statuses == ["active", "paused"]
        assert "thunder_floor_restores_total 1.0" in (await client.get("/metrics")).text
        assert sched.ledger_problems() == []


async def test_active_acting_program_is_paused_when_another_needs_room_and_restored_later() -> None:
    cfg = PolicyConfig(time_decay=False)
    async with proxy({A: FakeVllm()}, policy=cfg) as (client, _, sched):
        await client.post("/v1/chat/completions", json=chat("a" * 1600, program_id="one"))  # ~407 tokens
        await client.post("/v1/chat/completions", json=chat("b" * 1200, program_id="two"))  # ~307 tokens
        # "one" returns with a larger prompt: it is reasoning now, "two" is acting and shortest: paused.
        r = await client.post("/v1/chat/completions", json=chat("a" * 3200, program_id="one"))
        assert r.status_code == 200
        two = (await client.get("/programs/two")).json()
        assert two["status"] == "paused" and two["pauses"] == 1
        assert sched.stats.pauses["thrashing"] == 1
        # "one" finishes its work: release it, and "two" is restored on its next request.
        await client.post("/programs/one/release")
        r = await client.post("/v1/chat/completions", json=chat("b" * 1300, program_id="two"))
        assert r.status_code == 200
        two = (await client.get("/programs/two")).json()
        assert two["status"] == "active" and two["restores"] == 1
        metrics = (await client.get("/metrics")).text
        assert 'thunder_pauses_total{reason="thrashing"} 1.0' in metrics
        assert "thunder_restores_total 1.0" in metrics
        assert f'thunder_backend_capacity_tokens{{backend="{A}"}} 1024.0' in metrics


async def test_release_fails_a_held_request_with_a_clear_error() -> None:
    cfg = PolicyConfig(time_decay=False, min_running=0)
    async with proxy({A: FakeVllm()}, policy=cfg) as (client, _, _):
        await client.post("/v1/chat/completions", json=chat("z" * 3600, program_id="big"))  # 907 of 1,024
        held = asyncio.create_task(client.post("/v1/chat/completions", json=chat("w" * 800, program_id="late")))
        await until_held(client, "late")
        assert (await client.get("/programs/late")).json()["held"] == 1
        await client.post("/programs/late/release")
        r = await asyncio.wait_for(held, 5)
        assert r.status_code == 409 and "released" in r.json()["error"]["message"]


async def test_inactive_program_is_terminated_and_its_environment_reclaimed() -> None:
    ends: list[str] = []
    async with proxy({A: FakeVllm()}, ends=ends, inactivity_timeout_s=0.2) as (client, _, _):
        await client.post("/v1/chat/completions", json=chat("x", program_id="idle"))
        await client.post("/programs/busy/events", json={"kind": "tool_start", "sandbox_id": "s"})
        for _ in range(50):
            await asyncio.sleep(0.05)
            if ends:
                break
        assert ends == ["idle"]  # "busy" has a tool running: not idle
        live = {p["program_id"] for p in (await client.get("/programs")).json()}
        assert live == {"busy"}


async def test_refused_backend_is_marked_down_and_the_request_is_served_elsewhere() -> None:
    async with proxy({A: FakeVllm(num_blocks=64), B: FakeVllm(num_blocks=128)}) as (client, transport, _):
        r = await client.post("/v1/chat/completions", json=chat("x" * 40, program_id="p"))
        assert (await client.get("/programs/p")).json()["backend"] == B  # most free capacity
        transport.refused.add(B)
        r = await client.post("/v1/chat/completions", json=chat("x" * 80, program_id="p"))
        assert r.status_code == 200
        info = (await client.get("/programs/p")).json()
        assert info["backend"] == A and info["kv_lost"] == 1
        health = (await client.get("/health")).json()
        assert {b["url"]: b["healthy"] for b in health["backends"]} == {A: True, B: False}
        r = await client.post("/v1/chat/completions", json=chat("new"))
        assert r.status_code == 200


async def test_models_health_and_no_backend() -> None:
    async with proxy({A: FakeVllm()}) as (client, transport, _):
        assert (await client.get("/v1/models")).json()["data"][0]["id"] == "fake"
        assert (await client.get("/health")).status_code == 200
    async with proxy({A: FakeVllm()}, no_backend_timeout_s=0.2) as (client, transport, sched):
        transport.refused.add(A)
        await sched.refresh_backends()
        await sched.refresh_backends()
        assert (await client.get("/health")).status_code == 503
        r = await client.post("/v1/chat/completions", json=chat("x", program_id="p"))
        assert r.status_code == 503 and "no usable backend" in r.json()["error"]["message"]
