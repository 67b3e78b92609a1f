"""The CPU vLLM helper's typed view of one /metrics scrape; `thunder_sched.vllm_metrics` does the parsing.

The view insists on every number a test reads, so a missing metric is a clear `MetricsError` instead of a
silent zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from thunder_sched.vllm_metrics import (
    CACHE_CONFIG_INFO,
    KV_CACHE_USAGE,
    PREFIX_CACHE_HITS,
    PREFIX_CACHE_QUERIES,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    MetricsError,
    parse_snapshot,
)


@dataclass(frozen=True)
class VllmMetrics:
    """One scrape of a vLLM server, summed over its engines."""

    block_size: int
    num_gpu_blocks: int
    kv_cache_usage: float  # fraction of the KV pool in use, 0..1 (capacity-weighted over engines)
    prefix_cache_hits: float  # tokens served from the prefix cache since start
    prefix_cache_queries: float  # tokens looked up in the prefix cache since start
    requests_running: float
    requests_waiting: float

    @property
    def capacity_tokens(self) -> int:
        """Size of the KV pool in tokens: the number the scheduler admits programs against."""
        return self.num_gpu_blocks * self.block_size


def parse_metrics(text: str, *, model: str | None = None) -> VllmMetrics:
    """Extract capacity, KV usage, prefix-cache counters and queue sizes from vLLM's /metrics text.

    `model` restricts to samples whose `model_name` label matches (all samples when None).
    Raises `MetricsError` when a needed metric is missing or the text is malformed.
    """
    snap = parse_snapshot(text, model=model)
    if snap.cache is None:
        raise MetricsError(
            f"/metrics has no {CACHE_CONFIG_INFO} with a known num_gpu_blocks: "
            "is this a vLLM server with stats enabled, done profiling its memory?"
        )
    values = {
        KV_CACHE_USAGE: snap.kv_usage,
        PREFIX_CACHE_HITS: snap.prefix_cache_hits,
        PREFIX_CACHE_QUERIES: snap.prefix_cache_queries,
        REQUESTS_RUNNING: snap.requests_running,
        REQUESTS_WAITING: snap.requests_waiting,
    }
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise MetricsError(f"/metrics has no {missing[0]} sample" + (f" for model {model!r}" if model else ""))
    return VllmMetrics(
        block_size=snap.cache.block_size,
        num_gpu_blocks=snap.cache.num_gpu_blocks,
        kv_cache_usage=snap.kv_usage or 0.0,
        prefix_cache_hits=snap.prefix_cache_hits or 0.0,
        prefix_cache_queries=snap.prefix_cache_queries or 0.0,
        requests_running=snap.requests_running or 0.0,
        requests_waiting=snap.requests_waiting or 0.0,
    )
