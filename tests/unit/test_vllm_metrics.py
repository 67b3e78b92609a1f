"""The vLLM /metrics parser on canned scrapes shaped like vLLM 0.32.0's (a GPU server, two DP engines)."""

from __future__ import annotations

import pytest

from thunder_sched.vllm_metrics import (
    CacheConfig,
    HostTier,
    MetricsError,
    counter_total,
    gauge_value,
    parse_cache_config,
    parse_samples,
    parse_snapshot,
)

GIB = 1 << 30


def _info(engine: str, *, blocks: str = "4000", offload: str = "None", backend: str = "native") -> str:
    # Labels as CacheConfig.metrics_info() writes them (a subset), in prometheus_client's sorted order.
    return (
        f'vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="{engine}",'
        f'gpu_memory_utilization="0.9",kv_cache_memory_bytes="None",kv_offloading_backend="{backend}",'
        f'kv_offloading_size="{offload}",num_cpu_blocks="None",num_gpu_blocks="{blocks}"}} 1.0\n'
    )


def scrape(
    usage: tuple[float, float] = (0.25, 0.75),
    preemptions: tuple[float, float] = (0.0, 0.0),
    *,
    blocks: tuple[str, str] = ("4000", "4000"),
    offload: str = "None",
    backend: str = "native",
    extra: str = "",
) -> str:
    text = "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    text += "# TYPE vllm:cache_config_info gauge\n"
    for engine, count in zip("01", blocks, strict=True):
        text += _info(engine, blocks=count, offload=offload, backend=backend)
    for engine in "01":
        i = int(engine)
        labels = f'engine="{engine}",model_name="m"'
        text += (
            f"vllm:num_requests_running{{{labels}}} {1 + i}.0\n"
            f"vllm:num_requests_waiting{{{labels}}} {2 * i}.0\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {usage[i]}\n"
            f"vllm:num_preemptions_total{{{labels}}} {preemptions[i]}\n"
            f"vllm:num_preemptions_created{{{labels}}} 1.7e+09\n"
            f"vllm:prefix_cache_queries_total{{{labels}}} 1000.0\n"
            f"vllm:prefix_cache_hits_total{{{labels}}} 400.0\n"
        )
    return text + extra


# -- the KV pool -------------------------------------------------------------------------------------------


def test_data_parallel_engines_share_the_front_ends_total() -> None:
    # vLLM's front end sums num_gpu_blocks over its engines and labels that total onto each engine's sample.
    assert parse_cache_config(scrape()) == CacheConfig(block_size=16, num_gpu_blocks=4000, engines=2)
    assert parse_cache_config(scrape()).capacity_tokens == 64_000  # type: ignore[union-attr]


def test_per_engine_pools_that_differ_are_summed() -> None:
    cache = parse_cache_config(scrape(blocks=("3000", "1000")))
    assert cache == CacheConfig(16, 4000, engines=2)


def test_repeated_identical_series_are_counted_once() -> None:
    text = scrape()
    doubled = text + text  # e.g. two API server processes exporting the same series
    snap, again = parse_snapshot(text), parse_snapshot(doubled)
    assert again == snap
    assert snap.preemptions == 0.0 and snap.requests_running == 3.0 and snap.requests_waiting == 2.0
    assert snap.prefix_cache_hits == 800.0 and snap.prefix_cache_queries == 2000.0


def test_block_count_none_is_ignored_until_known() -> None:
    assert parse_cache_config(scrape(blocks=("None", "None"))) is None
    assert parse_cache_config(scrape(blocks=("None", "4000"))) == CacheConfig(16, 4000, engines=1)
    assert parse_snapshot(scrape(blocks=("None", "None"))).capacity_tokens == 0


def test_engines_with_different_block_sizes_are_rejected() -> None:
    text = scrape().replace(
        'block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="1"',
        'block_size="32",cache_dtype="auto",enable_prefix_caching="True",engine="1"',
    )
    with pytest.raises(MetricsError, match="different block sizes"):
        parse_cache_config(text)


def test_no_cache_config_info_means_unknown_pool() -> None:
    assert parse_cache_config("vllm:num_requests_running 1\n") is None


# -- live engine state -------------------------------------------------------------------------------------


def test_usage_is_weighted_by_each_engines_share_of_the_pool() -> None:
    equal = parse_snapshot(scrape((0.2, 0.6)))
    assert equal.kv_usage == pytest.approx(0.4)
    assert equal.engine_kv_usage == (("0", 0.2), ("1", 0.6))
    assert equal.running_tokens == pytest.approx(0.4 * 64_000)
    uneven = parse_snapshot(scrape((0.2, 0.6), blocks=("3000", "1000")))
    assert uneven.kv_usage == pytest.approx((0.2 * 3000 + 0.6 * 1000) / 4000)


def test_usage_falls_back_to_the_old_gauge_name_and_stays_in_range() -> None:
    text = scrape((0.5, 0.5)).replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert parse_snapshot(text).kv_usage == 0.5
    assert parse_snapshot(scrape((1.5, 1.0))).kv_usage == 1.0
    no_usage = "\n".join(line for line in scrape().splitlines() if "usage_perc" not in line)
    assert parse_snapshot(no_usage).kv_usage is None and parse_snapshot(no_usage).running_tokens is None


def test_preemptions_are_summed_over_engines_and_created_stamps_ignored() -> None:
    assert parse_snapshot(scrape(preemptions=(3.0, 4.0))).preemptions == 7.0
    without = "\n".join(line for line in scrape().splitlines() if "num_preemptions_total" not in line)
    assert parse_snapshot(without).preemptions is None


def test_model_filter_keeps_one_models_series() -> None:
    text = scrape() + 'vllm:num_requests_running{engine="0",model_name="other"} 10.0\n'
    assert parse_snapshot(text, model="m").requests_running == 3.0
    assert parse_snapshot(text).requests_running == 13.0
    assert parse_snapshot(text, model="missing").requests_running is None


# -- the host KV tier --------------------------------------------------------------------------------------


def test_no_tier_without_any_sign_of_one() -> None:
    snap = parse_snapshot(scrape())  # kv_offloading_size="None", num_cpu_blocks="None"
    assert snap.host_tier is None and snap.host_tier_tokens == 0


def test_kv_offloading_size_shows_a_tier_but_not_its_size_in_tokens() -> None:
    snap = parse_snapshot(scrape(offload="8.0"))
    assert snap.host_tier == HostTier(backend="native", size_bytes=2 * 8 * GIB, tokens=None)  # 8 GiB per engine
    assert snap.host_tier_tokens == 0
    lmcache = parse_snapshot(scrape(offload="8.0", backend="lmcache")).host_tier
    assert lmcache == HostTier(backend="lmcache", size_bytes=None, tokens=None)  # sized by the LMCache server


def test_simple_offload_connector_reports_the_tier_in_blocks() -> None:
    info = "".join(
        f'vllm:simple_kv_offload_info{{backend="cpu",capacity_blocks="{n}",engine="{e}",lazy_offload="false",'
        f'model_name="m",page_cache="false"}} 1.0\n'
        for e, n in (("0", 10_000), ("1", 10_000))
    )
    snap = parse_snapshot(scrape(offload="8.0", extra=info))
    assert snap.host_tier == HostTier(backend="native", size_bytes=16 * GIB, tokens=20_000 * 16)
    assert snap.host_tier_tokens == 320_000
    disk = info.replace('backend="cpu"', 'backend="disk"')
    assert parse_snapshot(scrape(offload="8.0", extra=disk)).host_tier_tokens == 0  # a disk pool is no host tier


def test_offloading_connector_metrics_alone_show_a_tier_of_unknown_size() -> None:
    declared = (
        "# HELP vllm:kv_offload_cpu_cache_usage_perc Fraction...\n# TYPE vllm:kv_offload_cpu_cache_usage_perc gauge\n"
    )
    assert parse_snapshot(scrape(extra=declared)).host_tier == HostTier("native", None, None)


# -- the exposition format and the small helpers -----------------------------------------------------------


def test_counter_total_and_gauge_value() -> None:
    text = scrape(preemptions=(1.0, 2.0))
    assert counter_total(text, "vllm:num_preemptions") == 3.0
    assert counter_total(text, "vllm:num_preemptions_total") == 3.0
    assert counter_total(text, "vllm:absent") == 0.0
    assert counter_total("thunder_restores 5.0\n", "thunder_restores") == 5.0
    assert gauge_value(text, "vllm:num_requests_running") == 3.0
    assert gauge_value(text, "vllm:absent") is None


def test_parse_samples_handles_escapes_specials_and_timestamps() -> None:
    text = (
        'm{a="x\\"y",b="back\\\\slash",c="line\\nbreak",d="{not, a brace}",} 1.5 1700000000000\n'
        "bare_metric 7\n"
        'inf_metric{le="+Inf"} +Inf\n'
        "nan_metric NaN\n"
        "   \n# TYPE m gauge\n"
    )
    samples = parse_samples(text)
    assert [s.name for s in samples] == ["m", "bare_metric", "inf_metric", "nan_metric"]
    assert samples[0].labels == {"a": 'x"y', "b": "back\\slash", "c": "line\nbreak", "d": "{not, a brace}"}
    assert samples[0].value == 1.5
    assert samples[1].labels == {} and samples[1].value == 7.0
    assert samples[2].value == float("inf")
    assert samples[3].value != samples[3].value  # NaN


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('m{a="unterminated} 1', "unterminated label value"),
        ("m{a=1} 1", "malformed label set"),
        ('m{a="1"}', "expected `name"),
        ("m notanumber", "not a number"),
    ],
)
def test_parse_samples_rejects_malformed_lines_with_line_number(line: str, message: str) -> None:
    with pytest.raises(MetricsError, match=f"line 2: .*{message}"):
        parse_samples(f"ok 1\n{line}\n")
