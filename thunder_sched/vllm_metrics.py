"""The one reader of vLLM's Prometheus /metrics text: KV pool size, live engine state and the host KV tier.

Pure functions over text (no I/O), unit-tested on canned scrapes. Metric and label names are vLLM's own,
checked against vllm 0.32.0 (`vllm/v1/metrics/loggers.py`, `vllm/config/cache.py`,
`vllm/v1/engine/core_client.py`, `vllm/v1/simple_kv_offload/metrics.py`, `vllm/v1/kv_offload/cpu/common.py`).
A small parser of the exposition format's sample lines is used instead of prometheus_client's, whose handling
of `name:with_colons_total` counter families differs between releases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from thunder_sched.errors import SchedulerError

CACHE_CONFIG_INFO = "vllm:cache_config_info"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
KV_CACHE_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # name before vLLM 0.9, exported alongside until removed
PREEMPTIONS = "vllm:num_preemptions_total"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits_total"
PREFIX_CACHE_HITS_OLD = "vllm:gpu_prefix_cache_hits_total"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_CACHE_QUERIES_OLD = "vllm:gpu_prefix_cache_queries_total"
REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
SIMPLE_OFFLOAD_INFO = "vllm:simple_kv_offload_info"
OFFLOAD_CPU_USAGE = "vllm:kv_offload_cpu_cache_usage_perc"

_GIB = 1 << 30
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_Series = list[tuple[dict[str, str], float]]


class MetricsError(SchedulerError, ValueError):
    """The /metrics text is malformed or inconsistent (a prober counts it as a failed probe)."""


# -- the exposition format ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _parse_labels(text: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Parse `{k="v",...}` starting at `text[pos] == "{"`; return the labels and the index after `}`."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " ,":
            pos += 1
        if pos < len(text) and text[pos] == "}":
            return labels, pos + 1
        eq = text.find("=", pos)
        if eq < 0 or eq + 1 >= len(text) or text[eq + 1] != '"':
            raise MetricsError(f"line {lineno}: malformed label set: {text!r}")
        key = text[pos:eq].strip()
        value: list[str] = []
        pos = eq + 2
        while True:
            if pos >= len(text):
                raise MetricsError(f"line {lineno}: unterminated label value: {text!r}")
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                value.append(_ESCAPES.get(text[pos + 1], "\\" + text[pos + 1]))
                pos += 2
            elif char == '"':
                pos += 1
                break
            else:
                value.append(char)
                pos += 1
        labels[key] = "".join(value)


def parse_samples(text: str) -> list[Sample]:
    """Every sample line of a Prometheus text exposition (comments and blank lines skipped)."""
    samples = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        first = line.split(None, 1)[0]
        if brace >= 0 and brace < len(first):
            name = line[:brace]
            labels, end = _parse_labels(line, brace, lineno)
            rest = line[end:].split()
        else:
            name, labels, rest = first, {}, line.split()[1:]
        if not name or not rest:
            raise MetricsError(f"line {lineno}: expected `name[{{labels}}] value`: {raw!r}")
        try:
            value = float(rest[0])
        except ValueError:
            raise MetricsError(f"line {lineno}: value {rest[0]!r} is not a number") from None
        samples.append(Sample(name, labels, value))
    return samples


class _Scrape:
    """One scrape's samples by name; identical label sets are merged (API servers may repeat a series)."""

    def __init__(self, text: str) -> None:
        self._series: dict[str, dict[frozenset[tuple[str, str]], Sample]] = {}
        for sample in parse_samples(text):
            self._series.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample
        # A family vLLM registered but has not yet set (connector metrics appear on first use).
        self.declared = set(re.findall(r"^#\s*TYPE\s+(\S+)", text, flags=re.MULTILINE))

    def series(self, name: str, model: str | None = None) -> _Series:
        found = self._series.get(name, {}).values()
        return [(s.labels, s.value) for s in found if model is None or s.labels.get("model_name") == model]

    def has(self, name: str) -> bool:
        return name in self._series or name in self.declared


def counter_total(text: str, name: str) -> float:
    """Sum of a counter over its label sets (accepts the name with or without `_total`)."""
    scrape = _Scrape(text)
    base = name.removesuffix("_total")
    return _sum(scrape.series(base + "_total")) or _sum(scrape.series(base)) or 0.0


def gauge_value(text: str, name: str) -> float | None:
    """Sum of a gauge over its label sets; None when the scrape has none."""
    return _sum(_Scrape(text).series(name))


def _sum(series: _Series) -> float | None:
    return math.fsum(v for _, v in series) if series else None


def _int(raw: str | None) -> int | None:
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # vLLM writes "None" for a value not known yet


def _per_engine(series: _Series) -> dict[str, float]:
    """Value of each engine (the `engine` label); several series of one engine (e.g. per process): the max."""
    out: dict[str, float] = {}
    for labels, value in series:
        if math.isfinite(value):
            engine = labels.get("engine", "")
            out[engine] = max(value, out.get(engine, value))
    return out


# -- the KV pool -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The GPU KV pool behind one URL, summed over its data-parallel engines."""

    block_size: int
    num_gpu_blocks: int
    engines: int = 1

    @property
    def capacity_tokens(self) -> int:
        return self.block_size * self.num_gpu_blocks


def _pool(scrape: _Scrape) -> tuple[CacheConfig | None, dict[str, float]]:
    """The URL's pool and each engine's share of it in tokens.

    vLLM's front end sums `num_gpu_blocks` over the DP engines it manages (`MPClient._apply_ready_response`,
    vllm/v1/engine/core_client.py) and then labels that one total onto every engine's `cache_config_info`
    sample (`PrometheusStatLogger.log_metrics_info`, vllm/v1/metrics/loggers.py): equal counts on all engines
    are that total, counted once. Counts that differ cannot be one total, so they are per-engine pools, summed.
    Samples whose `num_gpu_blocks` is "None" (memory not profiled yet) are ignored.
    """
    pools: dict[str, tuple[int, int]] = {}
    for labels, _ in scrape.series(CACHE_CONFIG_INFO):
        block_size, blocks = _int(labels.get("block_size")), _int(labels.get("num_gpu_blocks"))
        if block_size and blocks and block_size > 0 and blocks > 0:
            pools[labels.get("engine", "")] = (block_size, blocks)
    if not pools:
        return None, {}
    block_sizes = {size for size, _ in pools.values()}
    if len(block_sizes) != 1:
        raise MetricsError(f"engines report different block sizes {sorted(block_sizes)}")
    block_size = block_sizes.pop()
    counts = {blocks for _, blocks in pools.values()}
    if len(counts) == 1:
        total = counts.pop()
        shares = {engine: total * block_size / len(pools) for engine in pools}
    else:
        total = sum(blocks for _, blocks in pools.values())
        shares = {engine: float(blocks * block_size) for engine, (_, blocks) in pools.items()}
    return CacheConfig(block_size, total, engines=len(pools)), shares


def parse_cache_config(text: str) -> CacheConfig | None:
    """The URL's KV pool from `vllm:cache_config_info`; None if absent or not yet known."""
    return _pool(_Scrape(text))[0]


# -- the host KV tier --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostTier:
    """A host-memory KV tier behind the engines (vLLM's KV offloading), summed over the engines.

    How a GPU vLLM (0.32.0) shows it on /metrics:
    - `vllm:cache_config_info` labels `kv_offloading_size` (GiB per engine, summed over its TP/PP workers;
      "None" when off) and `kv_offloading_backend` ("native" | "lmcache"): CacheConfig fields exported by
      `CacheConfig.metrics_info()` (vllm/config/cache.py). "native" hands that many bytes to the
      OffloadingConnector (`cpu_bytes_to_use`, vllm/config/vllm.py). Its size in tokens depends on the worker
      count, chunk size and page alignment (vllm/v1/kv_offload/cpu/spec.py), none of which /metrics shows,
      so it is not derived here. "lmcache" leaves the capacity to the LMCache server: no size at all.
    - `vllm:simple_kv_offload_info` label `capacity_blocks` with `backend="cpu"` (SimpleCPUOffloadConnector,
      VLLM_USE_SIMPLE_KV_OFFLOAD=1; vllm/v1/simple_kv_offload/metrics.py): the pool in scheduler blocks of
      `block_size` tokens, per engine. The only exact size in tokens vLLM exports.
    - `vllm:kv_offload_cpu_cache_usage_perc` (vllm/v1/kv_offload/cpu/common.py): declared whenever the CPU
      OffloadingConnector runs, also when configured by --kv-transfer-config instead of --kv-offloading-size.
      Shows the tier exists, not its size.
    `num_cpu_blocks` on cache_config_info is not a tier: the V1 engine never sets it (V0's swap space).
    """

    backend: str
    size_bytes: int | None  # host bytes configured for the tier, when vLLM shows them
    tokens: int | None  # capacity in tokens, only when vLLM exports it exactly


def _host_tier(scrape: _Scrape, cache: CacheConfig | None, model: str | None) -> HostTier | None:
    engines = cache.engines if cache else 1
    backend, size_bytes = None, None
    for labels, _ in scrape.series(CACHE_CONFIG_INFO):
        try:
            gib = float(labels.get("kv_offloading_size", "None"))
        except ValueError:
            continue
        if math.isfinite(gib) and gib > 0:
            backend = labels.get("kv_offloading_backend", "native")
            size_bytes = int(gib * _GIB) * engines if backend == "native" else None
            break
    blocks = {
        labels.get("engine", ""): count
        for labels, _ in scrape.series(SIMPLE_OFFLOAD_INFO, model)
        if labels.get("backend") == "cpu" and (count := _int(labels.get("capacity_blocks"))) and count > 0
    }
    tokens = sum(blocks.values()) * cache.block_size if blocks and cache else None
    if backend is None and not blocks and not scrape.has(OFFLOAD_CPU_USAGE):
        return None  # nothing indicates a tier: never invent one
    return HostTier(backend or "native", size_bytes, tokens)


# -- one scrape of the live engine state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """The state of the engines behind one URL in one scrape. A field is None when vLLM exports nothing
    for it; counts and counters are summed over the engines."""

    cache: CacheConfig | None
    kv_usage: float | None  # fraction of the KV pool in use, 0..1, capacity-weighted over the engines
    engine_kv_usage: tuple[tuple[str, float], ...]  # (engine label, fraction in use)
    preemptions: float | None  # vllm:num_preemptions_total since the engines started
    requests_running: float | None
    requests_waiting: float | None
    prefix_cache_hits: float | None  # tokens served from the prefix cache since start
    prefix_cache_queries: float | None  # tokens looked up in the prefix cache since start
    host_tier: HostTier | None

    @property
    def capacity_tokens(self) -> int:
        return self.cache.capacity_tokens if self.cache else 0

    @property
    def running_tokens(self) -> float | None:
        """KV tokens the engines hold now: usage x pool size."""
        if self.kv_usage is None or self.cache is None:
            return None
        return self.kv_usage * self.cache.capacity_tokens

    @property
    def host_tier_tokens(self) -> int:
        return (self.host_tier.tokens or 0) if self.host_tier else 0


def _first_present(scrape: _Scrape, names: Iterable[str], model: str | None) -> float | None:
    """Total of the first of `names` the scrape has (current name before the older one)."""
    for name in names:
        if series := scrape.series(name, model):
            return _sum(series)
    return None


def _weighted_usage(usage: dict[str, float], shares: dict[str, float]) -> float | None:
    if not usage:
        return None
    default = math.fsum(shares.values()) / len(shares) if shares else 1.0
    weights = {engine: shares.get(engine, default) for engine in usage}
    total = math.fsum(weights.values())
    mean = math.fsum(min(max(u, 0.0), 1.0) * weights[e] for e, u in usage.items()) / total if total else 0.0
    return min(max(mean, 0.0), 1.0)


def parse_snapshot(text: str, *, model: str | None = None) -> EngineSnapshot:
    """Everything the scheduler reads from one /metrics scrape.

    `model` keeps only series whose `model_name` label matches (cache_config_info has no such label).
    Raises `MetricsError` when the text is malformed or the engines disagree on their block size.
    """
    scrape = _Scrape(text)
    cache, shares = _pool(scrape)
    usage = _per_engine(scrape.series(KV_CACHE_USAGE, model)) or _per_engine(scrape.series(KV_CACHE_USAGE_OLD, model))
    return EngineSnapshot(
        cache=cache,
        kv_usage=_weighted_usage(usage, shares),
        engine_kv_usage=tuple(sorted(usage.items())),
        preemptions=_first_present(scrape, [PREEMPTIONS], model),
        requests_running=_first_present(scrape, [REQUESTS_RUNNING], model),
        requests_waiting=_first_present(scrape, [REQUESTS_WAITING], model),
        prefix_cache_hits=_first_present(scrape, [PREFIX_CACHE_HITS, PREFIX_CACHE_HITS_OLD], model),
        prefix_cache_queries=_first_present(scrape, [PREFIX_CACHE_QUERIES, PREFIX_CACHE_QUERIES_OLD], model),
        host_tier=_host_tier(scrape, cache, model),
    )
