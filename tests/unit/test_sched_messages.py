"""The Anthropic Messages API through the scheduler proxy, against a fake that emits what vLLM 0.32's
`/v1/messages` emits (vllm/entrypoints/anthropic/serving.py): usage of both shapes, the program lifecycle,
the Anthropic error shape, query strings, auth headers kept from the backend, model aliases. The real
vLLM is exercised in tests/vllm/test_sched_vllm.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.unit.test_sched_proxy import A, FakeVllm, chat, proxy, until_held
from thunder_sched.app import create_app
from thunder_sched.cli import parse_model_aliases
from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.sse import MessagesUsageTracker, parse_messages_usage
from thunder_sched.tokens import prompt_chars

COUNTED = 21  # what the fake's count_tokens answers


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass
class FakeMessagesVllm:
    """`/v1/messages` as vLLM serves it: one token per 4 prompt characters (+3), `max_tokens` words out.
    `cache_read` moves that many prompt tokens from `input_tokens` to `cache_read_input_tokens`, as vLLM does
    with --enable-prompt-tokens-details. Records bodies, query strings and headers."""

    cache_read: int = 0
    num_blocks: int = 64
    block_size: int = 16
    bodies: list[dict[str, Any]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    streams: list[bytes] = field(default_factory=list)  # the exact bytes of each stream sent
    gate: asyncio.Event | None = None

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        return prompt_chars("messages", body) // 4 + 3

    def usage(self, prompt: int, output: int) -> dict[str, int]:
        usage = {"input_tokens": prompt - self.cache_read, "output_tokens": output}
        if self.cache_read:
            usage["cache_read_input_tokens"] = self.cache_read
        return usage

    def app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return PlainTextResponse(
                f'vllm:cache_config_info{{block_size="{self.block_size}",num_gpu_blocks="{self.num_blocks}"}} 1.0\n'
            )

        async def record(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.bodies.append(body)
            self.queries.append(request.url.query)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            return body

        async def count_tokens(request: Request) -> Response:
            await record(request)
            return JSONResponse({"input_tokens": COUNTED, "context_management": {"original_input_tokens": COUNTED}})

        async def chat_completions(request: Request) -> Response:
            await record(request)
            usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
            return JSONResponse({"id": "c", "choices": [], "usage": usage})

        async def models(request: Request) -> Response:
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            return JSONResponse({"object": "list", "data": [{"id": "served", "object": "model"}]})

        async def messages(request: Request) -> Response:
            body = await record(request)
            if self.gate is not None:
                await self.gate.wait()
            prompt, n = self.prompt_tokens(body), body.get("max_tokens", 4)
            words = [f"w{i}" for i in range(n)]
            if not body.get("stream"):
                return JSONResponse(
                    {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "text", "text": " ".join(words)}],
                        "model": body["model"],
                        "stop_reason": "max_tokens",
                        "usage": self.usage(prompt, n),
                    }
                )
            start = {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": body["model"],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": self.usage(prompt, 0),
                },
            }
            events = [_event("message_start", start), b'event: ping\ndata: {"type": "ping"}\n\n']
            block = {"type": "text", "text": ""}
            events.append(
                _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
            )
            for w in words:
                delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
                events.append(_event("content_block_delta", delta))
            events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            final = {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": self.usage(prompt, n),
            }
            events += [_event("message_delta", final), _event("message_stop", {"type": "message_stop"})]
            self.streams.append(b"".join(events))

            async def send() -> AsyncIterator[bytes]:
                for e in events:
                    yield e

            return StreamingResponse(send(), media_type="text/event-stream")

        return Starlette(
            routes=[
                Route("/metrics", metrics),
                Route("/v1/models", models),
                Route("/v1/messages", messages, methods=["POST"]),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            ]
        )


def message(content: Any, **kw: Any) -> dict[str, Any]:
    return {"model": "served", "max_tokens": 4, "messages": [{"role": "user", "content": content}], **kw}


def anthropic_error(response: Any, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}, body
    assert body["error"]["type"] == error_type, body
    return body["error"]["message"]


async def test_non_streaming_usage_with_cache_fields_is_the_exact_context() -> None:
    fake = FakeMessagesVllm(cache_read=10)
    async with proxy({A: fake}) as (client, _, _):
        body = message("x" * 400, program_id="m1", system="You are terse.")
        r = await client.post("/v1/messages?beta=true", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"] == {"input_tokens": 106 - 10, "output_tokens": 4, "cache_read_input_tokens": 10}
        assert "program_id" not in fake.bodies[-1]
        assert fake.queries[-1] == "beta=true"
        info = (await client.get("/programs/m1")).json()
        # the prompt is input + cache read + cache creation: (400 + 14) // 4 + 3 = 106, plus 4 out
        assert info["tokens"] == 106 + 4 and info["tokens_exact"] is True
        assert info["steps"] == 1 and info["phase"] == "acting" and info["status"] == "active"


async def test_streaming_is_relayed_unchanged_and_counted_from_message_start_and_delta() -> None:
    fake = FakeMessagesVllm()
    async with proxy({A: fake}) as (client, _, _):
        r = await client.post(
            "/v1/messages", json=message("y" * 40, stream=True, max_tokens=6), headers={"X-Program-Id": "s"}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.content == fake.streams[-1]  # every event, usage included, reaches the client as sent
        assert "stream_options" not in fake.bodies[-1]  # an OpenAI field vLLM's Messages API does not take
        info = (await client.get("/programs/s")).json()
        assert info["tokens"] == 13 + 6 and info["tokens_exact"] and info["steps"] == 1


async def test_a_stream_grows_the_context_per_content_delta_while_it_runs() -> None:
    fake = FakeMessagesVllm(gate=asyncio.Event())
    async with proxy({A: fake}) as (client, _, sched):
        task = asyncio.create_task(client.post("/v1/messages", json=message("z" * 80, stream=True, program_id="g")))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(fake.bodies) == 2:  # count_tokens, then the message itself (held at the gate)
                break
        # The first prompt of a program is counted by the backend's /v1/messages/count_tokens.
        assert (await client.get("/programs/g")).json()["tokens"] == COUNTED
        assert fake.bodies[0] == {"model": "served", "messages": message("z" * 80)["messages"]}
        fake.gate.set()
        r = await asyncio.wait_for(task, 5)
        assert r.status_code == 200
        assert (await client.get("/programs/g")).json()["tokens"] == 23 + 4
        assert sched.ledger_problems() == []


def test_messages_usage_tracker_reads_split_events_and_counts_deltas() -> None:
    t = MessagesUsageTracker()
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 5, "cache_creation_input_tokens": 2}}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "message_delta"}}
    # An Anthropic server may repeat input_tokens in message_delta, or report 0 there: the prompt stays 7.
    final = {"type": "message_delta", "delta": {}, "usage": {"input_tokens": 0, "output_tokens": 3}}
    stream = (
        _event("message_start", start).replace(b"\n", b"\r\n")
        + _event("content_block_delta", delta) * 3
        + _event("message_delta", final)
        + _event("message_stop", {"type": "message_stop"})
    )
    out = b"".join(t.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + t.flush()
    assert out == stream
    assert t.usage is not None and (t.usage.prompt_tokens, t.usage.completion_tokens) == (7, 3)
    assert t.content_events == 3 and t.finished
    broken = MessagesUsageTracker()
    broken.feed(_event("message_start", start) + _event("content_block_delta", delta))
    assert broken.usage is None and not broken.finished  # no output count yet: the caller estimates


def test_parse_messages_usage_sums_the_cache_fields_and_refuses_junk() -> None:
    usage = {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 5}
    parsed = parse_messages_usage(usage)
    assert parsed is not None and (parsed.prompt_tokens, parsed.completion_tokens) == (48, 2)
    for junk in (
        None,
        [],
        {"input_tokens": "3", "output_tokens": 2},
        {"input_tokens": 3},
        {"input_tokens": True, "output_tokens": 1},
    ):
        assert parse_messages_usage(junk) is None


def test_prompt_chars_of_a_messages_body_reads_system_blocks_tool_use_and_results() -> None:
    body = {
        "system": [{"type": "text", "text": "abc"}],
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "run", "input": {"c": "ls"}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a b"}]}],
            },
        ],
        "tools": [{"name": "run", "input_schema": {"type": "object"}}],
    }
    tools = len(json.dumps(body["tools"]))
    assert prompt_chars("messages", body) == 3 + 5 + len("run") + len('{"c": "ls"}') + 3 + tools


async def test_a_paused_programs_message_is_held_without_error_then_served() -> None:
    cfg = PolicyConfig(time_decay=False, min_running=0)  # memory admission alone
    fake = FakeMessagesVllm()
    async with proxy({A: fake}, policy=cfg, tokenize_first_request=False) as (client, _, _):
        assert (await client.post("/v1/messages", json=message("z" * 3600, program_id="big"))).status_code == 200
        held = asyncio.create_task(
            client.post("/v1/messages", json=message("w" * 800, program_id="small", stream=True))
        )
        small = await until_held(client, "small")
        assert small["status"] == "paused" and small["held"] == 1 and not held.done()
        await client.post("/programs/big/release")
        r = await asyncio.wait_for(held, 5)
        assert r.status_code == 200 and r.content == fake.streams[-1]
        assert (await client.get("/programs/small")).json()["tokens_exact"]


async def test_errors_on_the_messages_routes_have_the_anthropic_shape_and_the_same_status() -> None:
    cfg = PolicyConfig(time_decay=False, min_running=0)
    overrides: dict[str, Any] = {"policy": cfg, "no_backend_timeout_s": 0.1, "tokenize_first_request": False}
    async with proxy({A: FakeMessagesVllm()}, **overrides) as (client, transport, _):
        r = await client.post("/v1/messages", content=b"{nope")
        assert "not valid JSON" in anthropic_error(r, 400, "invalid_request_error")
        r = await client.post("/v1/messages", json=message("a", program_id="a"), headers={"X-Program-Id": "b"})
        assert "differs" in anthropic_error(r, 400, "invalid_request_error")
        r = await client.post("/v1/messages/count_tokens", json=[1])
        anthropic_error(r, 400, "invalid_request_error")
        # A held request whose program is released: 409, as on the OpenAI routes.
        await client.post("/v1/messages", json=message("z" * 3600, program_id="big"))
        held = asyncio.create_task(client.post("/v1/messages", json=message("w" * 800, program_id="small")))
        await until_held(client, "small")
        await client.post("/programs/small/release")
        assert "terminated" in anthropic_error(await asyncio.wait_for(held, 5), 409, "invalid_request_error")
        # Every backend refuses: 503 overloaded_error (Anthropic clients retry it); count_tokens alike.
        transport.refused.add(A)
        r = await client.post("/v1/messages", json=message("q", program_id="big"))
        anthropic_error(r, 503, "overloaded_error")
        # The OpenAI routes keep their own shape.
        r = await client.post("/v1/chat/completions", content=b"{nope")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "type" not in r.json()


async def test_count_tokens_is_forwarded_with_its_query_and_starts_no_program() -> None:
    fake = FakeMessagesVllm()
    async with proxy({A: fake}) as (client, transport, _):
        r = await client.post(
            "/v1/messages/count_tokens?beta=true", json=message("hi", program_id="c"), headers={"X-Program-Id": "c"}
        )
        assert r.status_code == 200 and r.json()["input_tokens"] == COUNTED
        assert fake.queries[-1] == "beta=true" and "program_id" not in fake.bodies[-1]
        assert (await client.get("/programs", params={"include_terminated": True})).json() == []
        transport.refused.add(A)
        fake_down = await client.post("/v1/messages/count_tokens", json=message("hi"))
        assert fake_down.status_code in (502, 503) and fake_down.json()["type"] == "error"


SECRETS = {"Authorization": "Bearer thunder-token-1234", "x-api-key": "thunder-token-1234", "anthropic-version": "1"}


@pytest.mark.parametrize("forward_auth", [False, True])
async def test_auth_headers_reach_the_backend_only_when_configured(forward_auth: bool) -> None:
    # Before forward_auth existed, chat completions and /v1/models forwarded the client's Authorization
    # (thunder serve's token, for a client that sends it everywhere) to every backend.
    fake = FakeMessagesVllm()
    async with proxy({A: fake}, forward_auth=forward_auth) as (client, _, _):
        assert (await client.post("/v1/messages", json=message("m"), headers=SECRETS)).status_code == 200
        assert (await client.post("/v1/messages/count_tokens", json=message("m"), headers=SECRETS)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat("m"), headers=SECRETS)).status_code == 200
        assert (await client.get("/v1/models", headers=SECRETS)).status_code == 200
    assert len(fake.headers) == 4
    for h in fake.headers:
        assert ("authorization" in h) is forward_auth and ("x-api-key" in h) is forward_auth, h
        if forward_auth:
            assert h["authorization"] == SECRETS["Authorization"] and h["x-api-key"] == SECRETS["x-api-key"]
    assert fake.headers[0]["anthropic-version"] == "1"


async def test_model_aliases_rename_the_requested_model_on_every_completion_route() -> None:
    messages_fake, chat_fake = FakeMessagesVllm(), FakeVllm()
    aliases = {"claude-sonnet-4-5": "served", "*": "fallback"}
    async with proxy({A: messages_fake}, model_aliases=aliases) as (client, _, _):
        await client.post("/v1/messages", json={**message("m"), "model": "claude-sonnet-4-5"})
        await client.post("/v1/messages/count_tokens", json={**message("m"), "model": "claude-haiku-4-5"})
        assert [b["model"] for b in messages_fake.bodies] == ["served", "fallback"]
    async with proxy({A: chat_fake}, model_aliases={"gpt-x": "fake"}) as (client, _, _):
        await client.post("/v1/chat/completions", json={**chat("c"), "model": "gpt-x"})
        await client.post("/v1/chat/completions", json={**chat("c"), "model": "other"})  # no default: unchanged
        assert [b["model"] for b in chat_fake.bodies] == ["fake", "other"]


def test_model_alias_flags_and_config() -> None:
    assert parse_model_aliases(["claude-opus-4=m", "*=m2"]) == {"claude-opus-4": "m", "*": "m2"}
    for bad in (["noequals"], ["=m"], ["a="], ["a=m", "a=n"]):
        with pytest.raises(ValueError, match="--model-alias"):
            parse_model_aliases(bad)
    with pytest.raises(ValueError, match="non-empty"):
        SchedulerConfig(backends=(A,), model_aliases={"x": " "})
    assert SchedulerConfig(backends=(A,)).forward_auth is False


async def test_programs_with_the_same_system_field_share_a_prefix() -> None:
    system = [{"type": "text", "text": "You are a coding agent. " * 40}]
    async with proxy({A: FakeMessagesVllm()}, tokenize_first_request=False) as (client, _, sched):
        for pid in ("p1", "p2"):
            await client.post("/v1/messages", json=message("q" * 40, system=system, program_id=pid))
        await client.post("/v1/messages", json=message("q" * 40, system="other " * 40, program_id="p3"))
        keys = {pid: sched._programs[pid].prefix_key for pid in ("p1", "p2", "p3")}
        assert keys["p1"] is not None and keys["p1"] == keys["p2"] != keys["p3"]


class _BreaksAfterStart(httpx.AsyncByteStream):
    """A Messages stream whose connection drops after `message_start` and one delta."""

    def __init__(self, first: bytes) -> None:
        self._first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._first
        raise httpx.ReadError("connection reset by peer")


class _BreakingTransport(httpx.AsyncBaseTransport):
    """The fake for everything, except that /v1/messages streams break mid-way (a fault-injecting wrapper)."""

    def __init__(self, fake: FakeMessagesVllm) -> None:
        self._inner = httpx.ASGITransport(app=fake.app())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/messages":
            return await self._inner.handle_async_request(request)
        start = {"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 0}}}
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}}
        first = _event("message_start", start) + _event("content_block_delta", delta)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_BreaksAfterStart(first))


async def test_a_broken_stream_ends_with_an_anthropic_error_event_and_an_estimated_context() -> None:
    config = SchedulerConfig(backends=(A,), interval_s=0.05, tokenize_first_request=False)
    app = create_app(config, transport=_BreakingTransport(FakeMessagesVllm()))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client:
            r = await client.post("/v1/messages", json=message("b" * 400, stream=True, program_id="broken"))
            assert r.status_code == 200  # the stream had started
            name, data = sse_last(r.text)
            assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
            assert "failed mid-stream" in data["error"]["message"]
            info = (await client.get("/programs/broken")).json()
            # No message_delta: the context is the prompt estimate plus one token per streamed delta.
            assert not info["tokens_exact"] and info["tokens"] == 100 + 1
            assert info["held"] == 0 and info["steps"] == 0 and info["phase"] == "acting"


def sse_last(text: str) -> tuple[str, dict[str, Any]]:
    block = text.strip().split("\n\n")[-1]
    lines = dict(line.split(": ", 1) for line in block.splitlines())
    return lines["event"], json.loads(lines["data"])
