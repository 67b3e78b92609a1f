"""Parse vLLM's Prometheus `/metrics` text into the few numbers the scheduler needs.

Pure functions over text (no I/O), so they are unit-tested on samples. A small parser of the exposition
format's sample lines is used instead of prometheus_client's, whose handling of `name:with_colons_total`
counter families differs between releases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import MetricsError

CACHE_CONFIG_INFO = "vllm:cache_config_info"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits_total"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries_total"
REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


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


@dataclass(frozen=True)
class VllmMetrics:
    """One scrape of a vLLM server, summed over its engines."""

    block_size: int
    num_gpu_blocks: int
    kv_cache_usage: float  # fraction of the KV pool in use, 0..1 (mean over engines)
    prefix_cache_hits: float  # tokens served from the prefix cache since start
    prefix_cache_queries: float  # tokens looked up in the prefix cache since start
    requests_running: float
    requests_waiting: float

    @property
    def capacity_tokens(self) -> int:
        """Size of the KV pool in tokens: the number the scheduler admits programs against."""
        return self.num_gpu_blocks * self.block_size


def _int_label(sample: Sample, key: str) -> int:
    raw = sample.labels.get(key)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MetricsError(f"{sample.name} label {key}={raw!r} is not an integer") from None


def _matching(samples: list[Sample], name: str, model: str | None) -> list[Sample]:
    return [s for s in samples if s.name == name and (model is None or s.labels.get("model_name") == model)]


def _required(samples: list[Sample], name: str, model: str | None) -> list[Sample]:
    found = _matching(samples, name, model)
    if not found:
        raise MetricsError(f"/metrics has no {name} sample" + (f" for model {model!r}" if model else ""))
    return found


def _total(samples: list[Sample], name: str, model: str | None) -> float:
    return math.fsum(s.value for s in _required(samples, name, model))


def parse_metrics(text: str, *, model: str | None = None) -> VllmMetrics:
    """Extract capacity, KV usage, prefix-cache counters and queue sizes from vLLM's /metrics text.

    `model` restricts to samples whose `model_name` label matches (all samples when None).
    Raises `MetricsError` when a needed metric is missing or malformed.
    """
    samples = parse_samples(text)
    # cache_config_info carries no model_name label, so it is matched by name only.
    infos = _matching(samples, CACHE_CONFIG_INFO, None)
    if not infos:
        raise MetricsError(f"/metrics has no {CACHE_CONFIG_INFO}: is this a vLLM server with stats enabled?")
    block_sizes = {_int_label(s, "block_size") for s in infos}
    if len(block_sizes) != 1:
        raise MetricsError(f"engines report different block sizes {sorted(block_sizes)}")
    blocks = sum(_int_label(s, "num_gpu_blocks") for s in infos)
    usage = _required(samples, KV_CACHE_USAGE, model)
    return VllmMetrics(
        block_size=block_sizes.pop(),
        num_gpu_blocks=blocks,
        kv_cache_usage=math.fsum(s.value for s in usage) / len(usage),
        prefix_cache_hits=_total(samples, PREFIX_CACHE_HITS, model),
        prefix_cache_queries=_total(samples, PREFIX_CACHE_QUERIES, model),
        requests_running=_total(samples, REQUESTS_RUNNING, model),
        requests_waiting=_total(samples, REQUESTS_WAITING, model),
    )
