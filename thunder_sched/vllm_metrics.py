"""Reading vLLM's Prometheus text: KV cache geometry and prefix-cache counters."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class CacheConfig:
    block_size: int
    num_gpu_blocks: int

    @property
    def capacity_tokens(self) -> int:
        return self.block_size * self.num_gpu_blocks


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def parse_cache_config(text: str) -> CacheConfig | None:
    """`vllm:cache_config_info` labels; None if absent or not yet known (num_gpu_blocks 'None')."""
    for labels, _ in _samples(text, "vllm:cache_config_info"):
        try:
            block_size = int(labels["block_size"])
            blocks = int(labels["num_gpu_blocks"])
        except (KeyError, ValueError):
            continue
        if block_size > 0 and blocks > 0:
            return CacheConfig(block_size, blocks)
    return None


def counter_total(text: str, name: str) -> float:
    """Sum of a counter over its label sets (accepts the name with or without `_total`)."""
    base = name.removesuffix("_total")
    return sum(v for _, v in _samples(text, base + "_total")) or sum(v for _, v in _samples(text, base))


def gauge_value(text: str, name: str) -> float | None:
    values = _samples(text, name)
    return sum(v for _, v in values) if values else None
