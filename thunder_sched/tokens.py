"""Prompt size before vLLM reports it: character counts and a chars-per-token ratio calibrated on usage."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx

Endpoint = Literal["chat", "completion", "messages"]  # messages: the Anthropic Messages API


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # OpenAI content parts
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def _anthropic_chars(content: Any) -> int:
    """A Messages API `system` or message `content`: a string or blocks (text, thinking, tool_use input,
    tool_result content, itself a string or blocks)."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking", "name"):
            if isinstance(block.get(key), str):
                total += len(block[key])
        if block.get("input") is not None:  # tool_use: the arguments the template renders as JSON
            total += len(json.dumps(block["input"]))
        if block.get("content") is not None:  # tool_result
            total += _anthropic_chars(block["content"])
    return total


def prompt_chars(endpoint: Endpoint, body: dict[str, Any]) -> int:
    """Characters of the prompt text; the calibrated ratio absorbs the chat template's own tokens."""
    if endpoint == "messages":
        total = _anthropic_chars(body.get("system"))
        for message in body.get("messages") or []:
            if isinstance(message, dict):
                total += _anthropic_chars(message.get("content"))
        if body.get("tools"):
            total += len(json.dumps(body["tools"]))
        return total
    if endpoint == "chat":
        total = 0
        for message in body.get("messages") or []:
            if not isinstance(message, dict):
                continue
            total += _content_chars(message.get("content"))
            if message.get("tool_calls"):
                total += len(json.dumps(message["tool_calls"]))
        if body.get("tools"):
            total += len(json.dumps(body["tools"]))
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(p) for p in prompt if isinstance(p, str))
    return 0


def prompt_token_ids_count(endpoint: Endpoint, body: dict[str, Any]) -> int | None:
    """Exact count when a completion prompt is already token ids."""
    if endpoint != "completion":
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return sum(len(p) for p in prompt)
    return None


class CharsPerToken:
    """A global ratio, moved by every response's exact usage (exponential moving average)."""

    def __init__(self, initial: float, smoothing: float = 0.2) -> None:
        self.value = initial
        self.samples = 0
        self._smoothing = smoothing

    def observe(self, chars: int, tokens: int) -> float | None:
        """Record one prompt's exact size; returns that prompt's own ratio."""
        if chars <= 0 or tokens <= 0:
            return None
        ratio = chars / tokens
        self.value = ratio if self.samples == 0 else (1 - self._smoothing) * self.value + self._smoothing * ratio
        self.samples += 1
        return ratio

    def estimate(self, chars: int, program_ratio: float | None = None) -> int:
        ratio = program_ratio or self.value
        return max(1, round(chars / ratio))


_TOKENIZE_CHAT_FIELDS = (
    "model",
    "messages",
    "tools",
    "add_generation_prompt",
    "continue_final_message",
    "chat_template",
    "chat_template_kwargs",
    "add_special_tokens",
)
# What vLLM's /v1/messages/count_tokens accepts (vllm/entrypoints/anthropic/protocol.py, 0.32).
_COUNT_TOKENS_FIELDS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "chat_template_kwargs",
)


async def tokenize_count(
    client: httpx.AsyncClient, backend: str, endpoint: Endpoint, body: dict[str, Any], timeout_s: float
) -> int | None:
    """Exact prompt size from vLLM's /tokenize (Messages API: /v1/messages/count_tokens); None when the
    backend cannot tell (the caller estimates)."""
    path, key = "/tokenize", "count"
    if endpoint == "messages":
        payload = {k: body[k] for k in _COUNT_TOKENS_FIELDS if k in body}
        path, key = "/v1/messages/count_tokens", "input_tokens"
    elif endpoint == "chat":
        payload = {k: body[k] for k in _TOKENIZE_CHAT_FIELDS if k in body}
    else:
        if not isinstance(body.get("prompt"), str):
            return None
        payload = {"prompt": body["prompt"]}
        if "model" in body:
            payload["model"] = body["model"]
    try:
        resp = await client.post(f"{backend}{path}", json=payload, timeout=timeout_s)
        if resp.status_code != 200:
            return None
        count = resp.json().get(key)
    except (httpx.HTTPError, ValueError):
        return None
    return count if isinstance(count, int) and count > 0 else None
