"""Scheduler v2 behaviour on the fake backend: a live memory model (decode reserve, streamed growth), lost
tool_end events, learned tool durations, tool-aware pausing, flaps, coalesced rounds, host tiers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from tests.unit.test_sched_proxy import A, FakeVllm, chat, proxy
from thunder_sched.cli import build_parser, config_from_args
from thunder_sched.config import PolicyConfig
from thunder_sched.tool_model import ToolDurationModel, tool_key


@dataclass
class Event:
    kind: str
    program_id: str
    sandbox_id: str | None = "sb"
    tool: str | None = "bash"
    duration_s: float | None = None
    exit_code: int | None = 0
    time: float | None = None
    command: str | None = None


def test_tool_key_is_the_tool_and_the_commands_first_word_bounded() -> None:
    assert tool_key("bash", "pytest -q tests") == "bash:pytest"
    assert tool_key("bash", "  /usr/bin/pip install x") == "bash:pip"
    assert tool_key("file_read", None) == "file_read"
    assert tool_key("bash", ";;; rm") == "bash"  # no usable word
    assert len(tool_key("bash", "a" * 10_000)) <= len("bash:") + 48


def test_residual_life_grows_for_heavy_tailed_tools_and_keys_stay_bounded() -> None:
    model = ToolDurationModel(min_samples=3)
    for d in [0.2, 0.3, 0.4, 0.5, 30.0]:  # mostly short, one very long
        model.observe("p", "bash:pytest", d)
    fresh = model.expected_remaining("q", "bash:pytest", 0.0)
    late = model.expected_remaining("q", "bash:pytest", 1.0)
    assert fresh is not None and late is not None
    assert late > 20 > fresh  # past the short ones, only the long tail is left
    assert model.expected_remaining("q", "bash:ls", 0.0) is None  # never seen
    bounded = ToolDurationModel(max_keys=2)
    for i in range(50):
        bounded.observe("p", f"bash:cmd{i}", 1.0)
    assert bounded.keys <= 3


async def test_decode_reserve_and_streamed_tokens_grow_the_context_live() -> None:
    async with proxy({A: FakeVllm()}, decode_reserve_tokens=100) as (client, _, sched):
        lease = await sched.admit("p", "chat", chat("x" * 400, max_tokens=50))
        info = sched.program("p")
        assert info.reserve_tokens == 50  # never more than the request asks for
        before = info.tokens
        sched.progress(lease, 7)
        view = next(v for v in sched.views(0.0) if v.program_id == "p")
        assert view.tokens == before + 7 and view.reserve == 43
        sched.finish(lease, usage=None, completed=False)
        assert sched.program("p").tokens == before + 7  # what it streamed stays counted
        r = await client.post("/v1/chat/completions", json=chat("x" * 400, program_id="q", max_tokens=20))
        assert r.status_code == 200
        lease = await sched.admit("q", "chat", chat("x" * 400, max_tokens=1000))
        assert sched.program("q").reserve_tokens == int(20 * 1.25) + 1  # learned from its output length
        sched.finish(lease, usage=None, completed=False)


async def test_streamed_response_counts_tokens_as_they_arrive() -> None:
    fake = FakeVllm()
    async with proxy({A: fake}) as (client, _, sched):
        grown: list[int] = []
        original = sched.progress

        def spy(lease, events):  # type: ignore[no-untyped-def]
            original(lease, events)
            grown.append(lease.program.tokens)

        sched.progress = spy  # type: ignore[method-assign]
        r = await client.post("/v1/chat/completions", json=chat("x" * 80, program_id="s", stream=True, max_tokens=6))
        assert r.status_code == 200
        assert len(grown) >= 1 and grown == sorted(grown)


async def test_a_new_request_ends_a_tool_whose_tool_end_was_lost() -> None:
    async with proxy({A: FakeVllm()}, max_tool_s=0.3) as (client, _, sched):
        await client.post("/v1/chat/completions", json=chat("x", program_id="t"))
        await sched.on_tool_event(Event("tool_start", "t", command="make all"))
        assert sched.program("t").tools_running == 1
        await client.post("/v1/chat/completions", json=chat("y", program_id="t"))
        assert sched.program("t").tools_running == 0
        # A lost tool_end with no new request: the max_tool_s bound ends it (and then inactivity applies).
        await sched.on_tool_event(Event("tool_start", "t", command="make all"))
        await asyncio.sleep(0.4)
        sched.tick()
        assert sched.program("t").tools_running == 0


async def test_a_tool_known_to_run_long_frees_its_room_at_tool_start() -> None:
    cfg = PolicyConfig(time_decay=False, tool_pause_s=2.0, min_residency_s=0.0)
    async with proxy({A: FakeVllm()}, policy=cfg) as (client, _, sched):  # 1,024-token pool
        for _ in range(3):  # teach the model: "sleep" runs for 30 s
            await sched.on_tool_event(Event("tool_start", "teacher", command="sleep 30"))
            await sched.on_tool_event(Event("tool_end", "teacher", command="sleep 30", duration_s=30.0))
        await client.post("/v1/chat/completions", json=chat("z" * 3600, program_id="big"))  # ~907 of 1,024 tokens
        await sched.on_tool_event(Event("tool_start", "big", command="sleep 30"))
        # "small" does not fit next to "big"; big's tool will run long, so its room is given away at once.
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat("w" * 800, program_id="small")), 5)
        assert r.status_code == 200
        big = sched.program("big")
        assert big.status == "paused" and sched.stats.pauses["tool"] == 1
        # Its tool ends soon after: the pause is judged premature (decision quality is reported).
        await sched.on_tool_event(Event("tool_end", "big", command="sleep 30", duration_s=0.1))
        assert sched.stats.tool_pauses_premature == 1
        metrics = (await client.get("/metrics")).text
        assert 'thunder_tool_pauses_judged_total{outcome="premature"} 1.0' in metrics
        assert 'thunder_pauses_total{reason="tool"} 1.0' in metrics


async def test_short_tools_keep_their_room_when_tool_aware() -> None:
    cfg = PolicyConfig(time_decay=True, tau_s=0.01, tool_pause_s=5.0, min_residency_s=0.0, min_running=0)
    async with proxy({A: FakeVllm()}, policy=cfg) as (client, _, sched):
        for _ in range(3):
            await sched.on_tool_event(Event("tool_start", "teacher", command="ls"))
            await sched.on_tool_event(Event("tool_end", "teacher", command="ls", duration_s=0.2))
        await client.post("/v1/chat/completions", json=chat("z" * 3600, program_id="big"))
        await sched.on_tool_event(Event("tool_start", "big", command="ls -la"))
        await asyncio.sleep(0.1)  # decay alone would have freed its room by now (tau 10 ms)
        held = asyncio.create_task(client.post("/v1/chat/completions", json=chat("w" * 800, program_id="small")))
        await asyncio.sleep(0.3)
        assert not held.done() and sched.program("big").status == "active"
        await sched.on_tool_event(Event("tool_end", "big", command="ls -la", duration_s=0.4))
        await client.post("/programs/big/release")
        assert (await asyncio.wait_for(held, 5)).status_code == 200


async def test_many_events_in_one_loop_turn_cost_one_round() -> None:
    async with proxy({A: FakeVllm()}, interval_s=60.0) as (client, _, sched):
        await client.post("/v1/chat/completions", json=chat("x", program_id="p"))
        await asyncio.sleep(0)
        before = sched.stats.reschedules
        for _ in range(50):
            sched.kick()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sched.stats.reschedules == before + 1


async def test_host_tier_from_config_is_accounted_and_reported() -> None:
    cfg = PolicyConfig(time_decay=False, tool_aware=False)
    async with proxy({A: FakeVllm()}, policy=cfg, host_tier_tokens={A: 5000}) as (client, _, sched):
        await client.post("/v1/chat/completions", json=chat("a" * 1600, program_id="one"))  # ~407 tokens
        await client.post("/v1/chat/completions", json=chat("b" * 1200, program_id="two"))  # ~307 tokens
        await client.post("/v1/chat/completions", json=chat("a" * 3200, program_id="one"))  # two is paused
        sched.tick()  # tier accounting runs once per check interval
        two = (await client.get("/programs/two")).json()
        assert two["status"] == "paused" and two["in_host_tier"] is True
        metrics = (await client.get("/metrics")).text
        assert f'thunder_backend_host_tier_tokens{{backend="{A}"}} 5000.0' in metrics
        assert f'thunder_backend_host_tier_used_tokens{{backend="{A}"}} {float(two["tokens"])}' in metrics


def test_cli_latency_objective_tool_and_tier_flags() -> None:
    args = build_parser().parse_args(
        ["--backend", "http://x:1", "--max-step-wait", "12", "--no-tool-aware", "--host-tier-tokens", "http://x:1=9000"]
    )
    cfg = config_from_args(args)
    assert cfg.policy.max_wait_s == 12 and cfg.policy.tool_aware is False
    assert cfg.host_tier_tokens == {"http://x:1": 9000}
    with pytest.raises(ValueError, match="URL=TOKENS"):
        config_from_args(build_parser().parse_args(["--backend", "http://x:1", "--host-tier-tokens", "nope"]))
    with pytest.raises(ValueError, match="unknown backend"):
        config_from_args(build_parser().parse_args(["--backend", "http://x:1", "--host-tier-tokens", "http://y=1"]))
