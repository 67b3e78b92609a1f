"""The vLLM replicas: KV capacity and live engine state from their /metrics, health, marking them up or down."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from thunder_sched.errors import ConfigError
from thunder_sched.policy import BackendView
from thunder_sched.vllm_metrics import CacheConfig, EngineSnapshot, HostTier, parse_snapshot

log = logging.getLogger(__name__)

# Live correction: a preemption means the engine holds more KV than the scheduler predicted, so the capacity
# the policy plans with shrinks at once and grows back slowly while the engine stays free of preemptions.
PREEMPTION_DECAY = 0.9
FACTOR_FLOOR = 0.5
FACTOR_RECOVERY = 0.02  # per scrape without a new preemption


def next_capacity_factor(factor: float, preempted: bool) -> float:
    if preempted:
        return max(FACTOR_FLOOR, factor * PREEMPTION_DECAY)
    return min(1.0, factor + FACTOR_RECOVERY)


@dataclass(slots=True)
class Backend:
    url: str
    host_tier_override: int | None = None  # tokens, from configuration; wins over what /metrics shows
    healthy: bool = False
    cache: CacheConfig | None = None  # last known KV pool (kept when a scrape lacks it)
    snapshot: EngineSnapshot | None = None  # latest scrape
    capacity_factor: float = 1.0
    consecutive_failures: int = 0
    last_error: str | None = None

    @property
    def raw_capacity(self) -> int:
        """The KV pool vLLM reports, in tokens (for /health and status)."""
        return self.cache.capacity_tokens if self.cache else 0

    @property
    def capacity(self) -> int:
        """The pool the policy plans with: raw capacity shrunk after preemptions."""
        return int(self.raw_capacity * self.capacity_factor)

    @property
    def host_tier_tokens(self) -> int:
        if self.host_tier_override is not None:
            return self.host_tier_override
        return self.snapshot.host_tier_tokens if self.snapshot else 0

    @property
    def engine_running_tokens(self) -> float | None:
        usage = self.snapshot.kv_usage if self.snapshot else None
        return usage * self.raw_capacity if usage is not None and self.cache else None

    def view(self) -> BackendView:
        return BackendView(
            self.url,
            self.capacity,
            self.healthy,
            host_tier_tokens=self.host_tier_tokens,
            engine_running_tokens=self.engine_running_tokens,
            block_size=self.cache.block_size if self.cache else 1,
        )

    def observe(self, snapshot: EngineSnapshot) -> None:
        """Take a successful scrape: the pool, the host tier and the capacity correction."""
        previous, self.snapshot = self.snapshot, snapshot
        if snapshot.cache is None:
            log.warning("backend %s serves /metrics without vllm:cache_config_info; capacity unknown", self.url)
        elif snapshot.cache != self.cache:
            cache = snapshot.cache
            log.info(
                "backend %s: KV pool %d tokens (%d blocks x %d, %d engine(s))",
                self.url,
                cache.capacity_tokens,
                cache.num_gpu_blocks,
                cache.block_size,
                cache.engines,
            )
        self.cache = snapshot.cache or self.cache
        if snapshot.host_tier != (previous.host_tier if previous else None):
            self._log_host_tier(snapshot.host_tier)
        self._correct_capacity(previous, snapshot)

    def _correct_capacity(self, previous: EngineSnapshot | None, snapshot: EngineSnapshot) -> None:
        before, now = (previous.preemptions if previous else None), snapshot.preemptions
        # A counter that went down is a restarted engine: a new baseline, not a preemption.
        new = now - before if now is not None and before is not None and now > before else 0.0
        factor = next_capacity_factor(self.capacity_factor, new > 0)
        if factor < self.capacity_factor:
            log.warning(
                "backend %s: vLLM preempted %d request(s) since the last scrape; planning with %.0f%% of its "
                "KV pool (%d of %d tokens)",
                self.url,
                new,
                factor * 100,
                int(self.raw_capacity * factor),
                self.raw_capacity,
            )
        elif factor > self.capacity_factor:
            log_at = logging.INFO if factor == 1.0 else logging.DEBUG
            log.log(
                log_at, "backend %s: no new preemptions; planning with %.0f%% of its KV pool", self.url, factor * 100
            )
        self.capacity_factor = factor

    def _log_host_tier(self, tier: HostTier | None) -> None:
        if tier is None:
            log.info("backend %s: no host KV tier", self.url)
        elif self.host_tier_override is not None:
            log.info(
                "backend %s: host KV tier (%s); configured as %d tokens",
                self.url,
                tier.backend,
                self.host_tier_override,
            )
        elif tier.tokens is not None:
            log.info("backend %s: host KV tier (%s) of %d tokens", self.url, tier.backend, tier.tokens)
        else:
            size = f"{tier.size_bytes / (1 << 30):.1f} GiB" if tier.size_bytes else "size not shown"
            log.warning(
                "backend %s: host KV tier (%s, %s) whose size in tokens vLLM does not export; "
                "counted as 0 unless configured",
                self.url,
                tier.backend,
                size,
            )


@dataclass(frozen=True, slots=True)
class HealthChange:
    url: str
    healthy: bool
    reason: str


class BackendPool:
    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        timeout_s: float,
        failures_to_down: int,
        host_tier_tokens: dict[str, int] | None = None,
    ) -> None:
        """`host_tier_tokens`: per URL, the host KV tier size in tokens, overriding what /metrics shows."""
        overrides = host_tier_tokens or {}
        unknown = sorted(set(overrides) - set(urls))
        if unknown:
            raise ConfigError(f"host tier size given for unknown backend(s) {unknown}; backends are {list(urls)}")
        negative = sorted(url for url, tokens in overrides.items() if tokens < 0)
        if negative:
            raise ConfigError(f"host tier size must be >= 0 tokens, got a negative size for {negative}")
        self.backends = {url: Backend(url, host_tier_override=overrides.get(url)) for url in urls}
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
            snapshot = parse_snapshot(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            refused = isinstance(exc, httpx.ConnectError)
            return self.report_failure(backend.url, detail, definitive=refused)
        backend.observe(snapshot)
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
