"""Best-effort, ordered delivery of small JSON POSTs to one peer (the scheduler) that never blocks the caller.

One bounded queue and one sender task per server: `submit` only enqueues (a full queue drops the post, counted),
the sender posts them in order, retrying the head with backoff on transient failures (no answer, timeout, 5xx,
429) so that a later post never overtakes an earlier one, and drops it, counted, after the last attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .config import SchedulerLinkConfig
from .errors import McpServerError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class DeliveryStats:
    sent: int = 0  # answered 2xx
    rejected: int = 0  # answered 4xx other than 429 (not retried: the same post would be refused again)
    retries: int = 0  # attempts repeated after a transient failure
    dropped_full: int = 0  # the queue was full when submitted
    dropped_failed: int = 0  # every attempt failed, or still queued at close

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_failed


@dataclass(frozen=True, slots=True)
class Post:
    path: str  # below the peer's base URL, already quoted
    body: dict[str, Any] | None = None


class TransientError(McpServerError):
    """A failure worth another attempt."""


class PostSender:
    """`async with PostSender(config) as sender: sender.submit(Post(...))`. ``sleep`` is for tests (backoff)."""

    def __init__(
        self,
        config: SchedulerLinkConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.stats = DeliveryStats()
        self._queue: asyncio.Queue[Post] = asyncio.Queue(maxsize=config.queue_size)
        self._transport = transport
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False  # a drop was reported since the last success: warn once per streak

    async def __aenter__(self) -> PostSender:
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        self._client = httpx.AsyncClient(
            base_url=self.config.url, headers=headers, timeout=self.config.timeout_s, transport=self._transport
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="thunder-mcp-scheduler-sender")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def submit(self, post: Post) -> bool:
        """Queue ``post``; never waits. False (and counted) when the queue is full or the sender closed."""
        if self._closing:
            self._drop("the sender is closed", full=True)
            return False
        try:
            self._queue.put_nowait(post)
        except asyncio.QueueFull:
            self._drop(f"its queue of {self.config.queue_size} is full", full=True)
            return False
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    async def flush(self) -> None:
        """Wait until every post queued so far was delivered or dropped (tests, shutdown)."""
        await self._queue.join()

    async def aclose(self) -> None:
        """Give queued posts `drain_timeout_s` to go out, then stop; what is left is dropped, counted."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._queue.join()), self.config.drain_timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = self._queue.qsize()
        if left:
            self.stats.dropped_failed += left
            log.warning("scheduler at %s: %d events not delivered before shutdown", self.config.url, left)
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            post = await self._queue.get()
            try:
                await self._deliver(post)
            except asyncio.CancelledError:  # closed while this one was in flight
                self.stats.dropped_failed += 1
                raise
            except Exception:  # the sender must outlive any one post
                log.exception("delivering %s to the scheduler failed", post.path)
            finally:
                self._queue.task_done()

    async def _deliver(self, post: Post) -> None:
        assert self._client is not None
        error = ""
        for attempt in range(self.config.max_attempts):
            if attempt:
                self.stats.retries += 1
                delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
                await self._sleep(delay)
            try:
                response = await self._client.post(post.path, json=post.body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                self.stats.sent += 1
                self._failing = False
                return
            if response.status_code >= 500 or response.status_code == 429:
                error = f"HTTP {response.status_code}"
                continue
            self.stats.rejected += 1  # a 404 for a program the scheduler no longer knows is expected
            log.debug("scheduler refused %s: HTTP %d %s", post.path, response.status_code, response.text[:200])
            return
        self._drop(f"{self.config.max_attempts} attempts failed (last: {error})", full=False)

    def _drop(self, why: str, *, full: bool) -> None:
        if full:
            self.stats.dropped_full += 1
        else:
            self.stats.dropped_failed += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "scheduler at %s: dropping tool events and program ends (%s); %d dropped so far",
                self.config.url,
                why,
                self.stats.dropped,
            )
