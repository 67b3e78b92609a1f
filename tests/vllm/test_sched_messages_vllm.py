"""The Anthropic Messages API through the scheduler, against the real CPU vLLM (fixture `cpu_vllm`): the
program's exact context is the usage vLLM reports, streaming and not; count_tokens is forwarded without a
program; a Claude model name reaches vLLM as its served model; vLLM's own errors are relayed unchanged."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.vllm.test_sched_vllm import TIMEOUT, scheduler, words

pytestmark = pytest.mark.vllm

CLAUDE = "claude-sonnet-4-5-20250929"  # what Claude Code asks for; the alias maps it to the served model


def message_body(content: str, **kw: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 8,
        "temperature": 0,
        "system": [{"type": "text", "text": "You are a terse coding agent."}],
        "messages": [{"role": "user", "content": content}],
        **kw,
    }


def prompt_of(usage: dict[str, Any]) -> int:
    """Anthropic's total input: input_tokens + cache reads + cache writes."""
    return usage["input_tokens"] + usage.get("cache_read_input_tokens", 0) + usage.get("cache_creation_input_tokens", 0)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines and "data" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_messages_through_the_scheduler_count_the_program_exactly(cpu_vllm) -> None:
    aliases = {"*": cpu_vllm.model}
    async with scheduler([cpu_vllm.url], model_aliases=aliases) as (_, client):
        program = {"X-Program-Id": "claude-1", "anthropic-version": "2023-06-01", "x-api-key": "not-for-vllm"}
        r = await client.post("/v1/messages?beta=true", json=message_body(words(60, 1)), headers=program)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["type"] == "message" and answer["model"] == cpu_vllm.model
        usage = answer["usage"]
        assert usage["output_tokens"] > 0 and prompt_of(usage) > 0
        info = (await client.get("/programs/claude-1")).json()
        assert info["tokens_exact"] and info["tokens"] == prompt_of(usage) + usage["output_tokens"]
        assert info["steps"] == 1 and info["phase"] == "acting" and info["held"] == 0

        # The next step streams: the context is message_start's input plus message_delta's output tokens.
        follow = message_body(
            words(30, 2),
            stream=True,
            messages=[
                {"role": "user", "content": words(60, 1)},
                {"role": "assistant", "content": answer["content"]},
                {"role": "user", "content": words(30, 2)},
            ],
        )
        r = await client.post("/v1/messages?beta=true", json=follow, headers=program)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        names = [name for name, _ in events]
        assert names[0] == "message_start" and names[-1] == "message_stop" and "content_block_delta" in names
        start_usage = events[0][1]["message"]["usage"]
        final_usage = next(data["usage"] for name, data in events if name == "message_delta")
        assert prompt_of(start_usage) > prompt_of(usage)  # the whole conversation so far
        info = (await client.get("/programs/claude-1")).json()
        assert info["tokens_exact"] and info["steps"] == 2
        assert info["tokens"] == prompt_of(start_usage) + final_usage["output_tokens"]
        assert (await client.post("/programs/claude-1/release")).status_code == 200


async def test_count_tokens_is_answered_by_vllm_without_a_program(cpu_vllm) -> None:
    body = message_body(words(40, 3))
    del body["max_tokens"], body["temperature"]
    async with httpx.AsyncClient(timeout=TIMEOUT) as direct:
        expected = await direct.post(f"{cpu_vllm.url}/v1/messages/count_tokens", json={**body, "model": cpu_vllm.model})
    assert expected.status_code == 200, expected.text
    async with scheduler([cpu_vllm.url], model_aliases={CLAUDE: cpu_vllm.model}) as (_, client):
        r = await client.post("/v1/messages/count_tokens?beta=true", json=body, headers={"X-Program-Id": "count"})
        assert r.status_code == 200, r.text
        assert r.json()["input_tokens"] == expected.json()["input_tokens"] > 0
        assert (await client.get("/programs", params={"include_terminated": True})).json() == []


async def test_vllms_own_messages_error_is_relayed_and_ends_the_request(cpu_vllm) -> None:
    async with scheduler([cpu_vllm.url]) as (_, client):
        # An unknown model name (no alias configured): vLLM refuses it in the Anthropic error shape.
        r = await client.post("/v1/messages", json=message_body("hi", program_id="err"))
        assert r.status_code == 404, r.text
        assert r.json()["type"] == "error" and r.json()["error"]["message"]
        info = (await client.get("/programs/err")).json()
        assert info["held"] == 0 and info["phase"] == "acting" and info["steps"] == 0
