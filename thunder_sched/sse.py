"""Server-sent events passthrough: forward each event as soon as it is complete, read the usage chunk,
and drop it when only the scheduler (not the client) asked for it."""

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
