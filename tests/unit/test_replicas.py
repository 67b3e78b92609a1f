"""Backend state from /metrics scrapes: the view the policy gets, live capacity correction, host tier."""

from __future__ import annotations

import httpx
import pytest

from thunder_sched.errors import ConfigError
from thunder_sched.replicas import FACTOR_FLOOR, Backend, BackendPool, next_capacity_factor
from thunder_sched.vllm_metrics import parse_snapshot

URL = "http://vllm:8000"


def scrape(preemptions: float = 0.0, usage: float = 0.5, *, offload: str = "None", extra: str = "") -> str:
    return (
        f'vllm:cache_config_info{{block_size="16",engine="0",kv_offloading_backend="native",'
        f'kv_offloading_size="{offload}",num_cpu_blocks="None",num_gpu_blocks="1000"}} 1.0\n'
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {usage}\n'
        f'vllm:num_preemptions_total{{engine="0",model_name="m"}} {preemptions}\n' + extra
    )


def observed(*texts: str, override: int | None = None) -> Backend:
    backend = Backend(URL, host_tier_override=override)
    for text in texts:
        backend.observe(parse_snapshot(text))
    return backend


def test_view_carries_capacity_usage_and_no_tier() -> None:
    backend = observed(scrape(usage=0.25))
    backend.healthy = True
    view = backend.view()
    assert (view.url, view.capacity, view.healthy) == (URL, 16_000, True)
    assert view.engine_running_tokens == 4_000.0
    assert view.host_tier_tokens == 0
    assert backend.raw_capacity == 16_000


def test_unknown_usage_or_pool_gives_no_running_tokens() -> None:
    assert Backend(URL).view().engine_running_tokens is None
    no_usage = "\n".join(line for line in scrape().splitlines() if "usage" not in line)
    assert observed(no_usage).view().engine_running_tokens is None


def test_preemptions_shrink_capacity_and_quiet_scrapes_restore_it() -> None:
    backend = observed(scrape(0), scrape(2))
    assert backend.capacity_factor == pytest.approx(0.9)
    assert backend.capacity == 14_400 and backend.raw_capacity == 16_000
    assert backend.view().capacity == 14_400
    backend.observe(parse_snapshot(scrape(5)))
    assert backend.capacity_factor == pytest.approx(0.81)
    for _ in range(5):
        backend.observe(parse_snapshot(scrape(5)))
    assert backend.capacity_factor == pytest.approx(0.91)
    for _ in range(20):
        backend.observe(parse_snapshot(scrape(5)))
    assert backend.capacity_factor == 1.0


def test_factor_has_a_floor_and_a_restart_is_no_preemption() -> None:
    factor = 1.0
    for _ in range(20):
        factor = next_capacity_factor(factor, preempted=True)
    assert factor == FACTOR_FLOOR
    backend = observed(scrape(0), scrape(10), scrape(0))  # the counter reset: vLLM restarted
    assert backend.capacity_factor == pytest.approx(0.92)
    assert observed(scrape(7)).capacity_factor == 1.0  # the first scrape is a baseline


def test_pool_is_kept_when_a_scrape_lacks_it() -> None:
    backend = observed(scrape(), 'vllm:num_requests_running{engine="0"} 1.0\n')
    assert backend.raw_capacity == 16_000


def test_host_tier_from_metrics_and_from_configuration() -> None:
    info = 'vllm:simple_kv_offload_info{backend="cpu",capacity_blocks="5000",engine="0",model_name="m"} 1.0\n'
    assert observed(scrape(offload="4.0", extra=info)).view().host_tier_tokens == 80_000
    assert observed(scrape(offload="4.0")).view().host_tier_tokens == 0  # size in tokens not exported
    assert observed(scrape(offload="4.0"), override=50_000).view().host_tier_tokens == 50_000
    assert observed(scrape(), override=0).view().host_tier_tokens == 0


def test_pool_validates_the_host_tier_configuration() -> None:
    pool = BackendPool((URL, "http://b"), timeout_s=1, failures_to_down=2, host_tier_tokens={URL: 1000})
    assert pool.get(URL).host_tier_tokens == 1000 and pool.get("http://b").host_tier_tokens == 0
    with pytest.raises(ConfigError, match="unknown backend"):
        BackendPool((URL,), timeout_s=1, failures_to_down=2, host_tier_tokens={"http://other": 1})
    with pytest.raises(ConfigError, match=">= 0"):
        BackendPool((URL,), timeout_s=1, failures_to_down=2, host_tier_tokens={URL: -1})


async def test_refresh_reads_one_scrape_per_backend() -> None:
    calls: list[str] = []
    counters = iter([0, 3])

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, text=scrape(next(counters)))

    pool = BackendPool((URL,), timeout_s=1, failures_to_down=2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        changes = await pool.refresh(client)
        await pool.refresh(client)
    assert [c.healthy for c in changes] == [True]
    assert calls == [f"{URL}/metrics"] * 2
    assert pool.views()[0].capacity == 14_400


async def test_malformed_metrics_count_as_a_failed_probe() -> None:
    pool = BackendPool((URL,), timeout_s=1, failures_to_down=1)
    pool.get(URL).healthy = True
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text="m notanumber\n"))
    async with httpx.AsyncClient(transport=transport) as client:
        changes = await pool.refresh(client)
    assert [c.healthy for c in changes] == [False]
    assert "not a number" in (pool.get(URL).last_error or "")
