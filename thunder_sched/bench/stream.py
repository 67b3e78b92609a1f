"""Reading one streamed chat completion as the client sees it: text, usage, time to first token, latency."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field

from thunder_sched.errors import SchedulerError


class StreamError(SchedulerError, ValueError):
    """The stream ended without the usage chunk (asked for with `include_usage`)."""


@dataclass(frozen=True, slots=True)
class StreamedStep:
    content: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float  # request sent -> first chunk carrying generated text
    latency_s: float  # request sent -> last byte


@dataclass(slots=True)
class SseReader:
    """Feed the stream's lines with their arrival times (monotonic seconds); `started` is when the request
    was sent, so time a scheduler holds the request counts in both figures."""

    started: float
    first_token_at: float | None = None
    usage: dict[str, int] | None = None
    _parts: list[str] = field(default_factory=list)

    def feed(self, line: str, now: float) -> None:
        if not line.startswith("data:"):
            return  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            if text:  # the role-only first chunk has no text and is not a token
                self._parts.append(text)
                if self.first_token_at is None:
                    self.first_token_at = now

    def finish(self, now: float) -> StreamedStep:
        if self.usage is None:
            raise StreamError("the stream ended without a usage chunk")
        # No visible text at all (every token decoded to ""): the last byte is the only honest bound.
        first = self.first_token_at if self.first_token_at is not None else now
        return StreamedStep(
            content="".join(self._parts),
            prompt_tokens=int(self.usage["prompt_tokens"]),
            completion_tokens=int(self.usage["completion_tokens"]),
            ttft_s=first - self.started,
            latency_s=now - self.started,
        )


async def read_stream(
    lines: AsyncIterable[str], started: float, clock: Callable[[], float] = time.monotonic
) -> StreamedStep:
    reader = SseReader(started)
    async for line in lines:
        reader.feed(line, clock())
    return reader.finish(clock())
