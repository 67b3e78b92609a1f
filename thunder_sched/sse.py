"""Server-sent events passthrough: forward each event as soon as it is complete and read its usage.

OpenAI streams: the usage chunk is dropped when only the scheduler (not the client) asked for it.
Anthropic Messages streams always carry usage (`message_start`, `message_delta`): nothing is dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from thunder_sched.program import Usage

_SEPARATORS = (b"\r\n\r\n", b"\n\n")


def _split_event(buffer: bytearray) -> tuple[bytes, bytes] | None:
    """(event including its separator, rest) for the first complete event, or None."""
    best: tuple[int, int] | None = None
    for sep in _SEPARATORS:
        i = buffer.find(sep)
        if i != -1 and (best is None or i < best[0]):
            best = (i, len(sep))
    if best is None:
        return None
    end = best[0] + best[1]
    return bytes(buffer[:end]), bytes(buffer[end:])


def _data(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _event_name(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip()
    return None


class _Splitter:
    """Whole events out of arbitrary byte chunks."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def events(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        out = []
        while (split := _split_event(self._buffer)) is not None:
            event, rest = split
            self._buffer = bytearray(rest)
            out.append(event)
        return out

    def rest(self) -> bytes:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


@dataclass(slots=True)
class UsageTracker:
    """Feed upstream bytes, get bytes to send downstream; `usage` holds the last usage seen."""

    strip_usage_chunk: bool
    usage: Usage | None = None
    content_events: int = 0  # roughly one token each: the estimate when a stream breaks before usage
    finished: bool = False  # saw `data: [DONE]`
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out = bytearray()
        while (split := _split_event(self._buffer)) is not None:
            event, rest = split
            self._buffer = bytearray(rest)
            if self._keep(event):
                out += event
        return bytes(out)

    def flush(self) -> bytes:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest if rest and self._keep(rest) else b""

    def _keep(self, event: bytes) -> bool:
        data = _data(event)
        if data is None:
            return True
        if data == b"[DONE]":
            self.finished = True
            return True
        if b'"usage"' not in data:
            self.content_events += 1
            return True
        try:
            obj = json.loads(data)
        except ValueError:
            return True
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            parsed = parse_usage(usage)
            if parsed is not None:
                self.usage = parsed
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if choices:
            self.content_events += 1
            return True
        # The final usage-only chunk (choices == []): the client gets it only if it asked.
        return not (self.strip_usage_chunk and isinstance(usage, dict))


def parse_usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None


def parse_messages_usage(usage: object) -> Usage | None:
    """An Anthropic `usage`: the prompt is `input_tokens` plus the cache reads and writes (vLLM reports
    `input_tokens = prompt_tokens - cache_read - cache_creation`, vllm/entrypoints/anthropic/serving.py)."""
    prompt = _messages_prompt(usage)
    output = usage.get("output_tokens") if isinstance(usage, dict) else None
    if prompt is None or not _is_count(output):
        return None
    return Usage(prompt, output)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _messages_prompt(usage: object) -> int | None:
    if not isinstance(usage, dict) or not _is_count(usage.get("input_tokens")):
        return None
    total = usage["input_tokens"]
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        if _is_count(usage.get(key)):
            total += usage[key]
    return total


@dataclass(slots=True)
class MessagesUsageTracker:
    """The Anthropic Messages stream: `message_start` carries the input usage, `message_delta` the
    cumulative output tokens (and, from vLLM and newer Anthropic servers, the input again), each
    `content_block_delta` one piece of generated content, `message_stop` the end. Events pass unchanged."""

    usage: Usage | None = None
    content_events: int = 0
    finished: bool = False  # saw `message_stop`
    _prompt: int | None = None
    _splitter: _Splitter = field(default_factory=_Splitter)

    def feed(self, chunk: bytes) -> bytes:
        for event in self._splitter.events(chunk):
            self._read(event)
        return chunk  # nothing is ever dropped: forward the bytes as they came

    def flush(self) -> bytes:
        rest = self._splitter.rest()
        if rest.strip():
            self._read(rest)
        return b""  # already forwarded by feed

    def _read(self, event: bytes) -> None:
        name = _event_name(event)
        if name == b"content_block_delta":
            self.content_events += 1
            return
        if name not in (None, b"message_start", b"message_delta", b"message_stop"):
            return  # ping, content_block_start/stop, error
        data = _data(event)
        try:
            obj = json.loads(data) if data else None
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "content_block_delta":  # a stream without `event:` lines
            self.content_events += 1
        elif kind == "message_stop":
            self.finished = True
        elif kind == "message_start":
            message = obj.get("message")
            self._take_prompt(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            usage = obj.get("usage")
            self._take_prompt(usage)
            output = usage.get("output_tokens") if isinstance(usage, dict) else None
            if self._prompt is not None and _is_count(output):
                self.usage = Usage(self._prompt, output)

    def _take_prompt(self, usage: object) -> None:
        prompt = _messages_prompt(usage)
        if prompt is not None and prompt > (self._prompt or 0):
            self._prompt = prompt  # message_delta may repeat it or, from some servers, report 0
