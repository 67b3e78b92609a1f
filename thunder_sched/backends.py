"""The vLLM replicas: KV capacity from their /metrics, health, and marking them up or down."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from thunder_sched.policy import BackendView
from thunder_sched.vllm_metrics import CacheConfig, parse_cache_config

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Backend:
    url: str
    healthy: bool = False
    cache: CacheConfig | None = None
    consecutive_failures: int = 0
    last_error: str | None = None

    @property
    def capacity(self) -> int:
        return self.cache.capacity_tokens if self.cache else 0

    def view(self) -> BackendView:
        return BackendView(self.url, self.capacity, self.healthy)


@dataclass(frozen=True, slots=True)
class HealthChange:
    url: str
    healthy: bool
    reason: str


class BackendPool:
    def __init__(self, urls: tuple[str, ...], *, timeout_s: float, failures_to_down: int) -> None:
        self.backends = {url: Backend(url) for url in urls}
        self._timeout = timeout_s
        self._failures_to_down = failures_to_down

    def views(self) -> list[BackendView]:
        return [b.view() for b in self.backends.values()]

    def usable(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.healthy and b.capacity > 0]

    def get(self, url: str) -> Backend:
        return self.backends[url]

    async def refresh(self, client: httpx.AsyncClient) -> list[HealthChange]:
        """Probe every backend concurrently; returns the health transitions."""
        results = await asyncio.gather(*(self._probe(client, b) for b in self.backends.values()))
        return [c for c in results if c is not None]

    async def _probe(self, client: httpx.AsyncClient, backend: Backend) -> HealthChange | None:
        try:
            resp = await client.get(f"{backend.url}/metrics", timeout=self._timeout)
            resp.raise_for_status()
            cache = parse_cache_config(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            refused = isinstance(exc, httpx.ConnectError)
            return self.report_failure(backend.url, detail, definitive=refused)
        if cache is None:
            log.warning("backend %s serves /metrics without vllm:cache_config_info; capacity unknown", backend.url)
        elif backend.cache != cache:
            log.info(
                "backend %s: KV pool %d tokens (%d blocks x %d)",
                backend.url,
                cache.capacity_tokens,
                cache.num_gpu_blocks,
                cache.block_size,
            )
        backend.cache = cache or backend.cache
        backend.consecutive_failures = 0
        backend.last_error = None
        if not backend.healthy:
            backend.healthy = True
            log.info("backend %s is up", backend.url)
            return HealthChange(backend.url, True, "probe succeeded")
        return None

    def report_failure(self, url: str, detail: str, *, definitive: bool) -> HealthChange | None:
        """Count a failure; a refused connection marks the backend down at once, others after a few."""
        backend = self.backends[url]
        backend.consecutive_failures += 1
        backend.last_error = detail
        if backend.healthy and (definitive or backend.consecutive_failures >= self._failures_to_down):
            backend.healthy = False
            log.warning("backend %s is down: %s", url, detail)
            return HealthChange(url, False, detail)
        return None
