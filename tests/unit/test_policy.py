"""The pure scheduling policy: thrashing check, decay, pause and restore order, aging, placement."""

from __future__ import annotations

import math

import pytest

from thunder_sched.config import PolicyConfig
from thunder_sched.policy import (
    BackendView,
    Decisions,
    PauseReason,
    Phase,
    ProgramView,
    Status,
    decay,
    decide,
    pause_score,
    restore_score,
    weight,
)

A, B = "http://a", "http://b"


def active(pid: str, tokens: int, backend: str = A, *, acting_s: float | None = None, **kw) -> ProgramView:
    phase = Phase.REASONING if acting_s is None else Phase.ACTING
    return ProgramView(pid, tokens, phase, Status.ACTIVE, backend=backend, acting_s=acting_s or 0.0, **kw)


def waiting(pid: str, tokens: int, *, waiting_s: float = 0.0, **kw) -> ProgramView:
    return ProgramView(pid, tokens, Phase.REASONING, Status.PAUSED, ready=True, waiting_s=waiting_s, **kw)


def paused_ids(d: Decisions) -> list[str]:
    return [p.program_id for p in d.pauses]


def restored(d: Decisions) -> dict[str, str]:
    return {r.program_id: r.backend for r in d.restores}


NO_DECAY = PolicyConfig(time_decay=False)


def test_decay_is_exponential_and_on_by_default() -> None:
    cfg = PolicyConfig(tau_s=10.0)
    assert cfg.time_decay is True
    assert decay(0.0, cfg) == 1.0
    assert decay(10.0, cfg) == pytest.approx(math.exp(-1))
    assert decay(30.0, cfg) == pytest.approx(math.exp(-3))
    assert decay(30.0, NO_DECAY) == 1.0
    acting = active("p", 1000, acting_s=10.0)
    assert weight(acting, cfg) == pytest.approx(1000 * math.exp(-1))
    assert weight(active("q", 1000), cfg) == 1000  # reasoning is never discounted


def test_scores_follow_equations_10_and_11() -> None:
    short_acting, long_acting = active("s", 100, acting_s=1), active("l", 1000, acting_s=1)
    short_reasoning = active("r", 100)
    assert pause_score(short_acting) > pause_score(long_acting) > pause_score(short_reasoning)
    cfg = PolicyConfig(aging_rate=0.0)
    assert restore_score(waiting("s", 100), cfg) == pytest.approx(1 / 100 + 1)
    assert restore_score(waiting("s", 100), cfg) > restore_score(waiting("l", 1000), cfg)


def test_under_capacity_nothing_happens() -> None:
    d = decide([active("a", 400), active("b", 500, acting_s=3)], [BackendView(A, 1000, True)], NO_DECAY)
    assert not d


def test_over_capacity_pauses_acting_first_then_shortest() -> None:
    progs = [
        active("r-small", 100),  # reasoning: paused last even though it is the smallest
        active("act-big", 500, acting_s=1),
        active("act-small", 200, acting_s=1),
        active("act-mid", 300, acting_s=1),
    ]
    # load 1100 > 1000: freeing the smallest acting program (200) is enough.
    d = decide(progs, [BackendView(A, 1000, True)], NO_DECAY)
    assert paused_ids(d) == ["act-small"]
    assert d.pauses[0].reason is PauseReason.THRASHING
    # load 1100 > 600: acting programs go shortest first until under the limit, reasoning untouched.
    d = decide(progs, [BackendView(A, 1000, True)], PolicyConfig(time_decay=False, lambda_max=0.6))
    assert paused_ids(d) == ["act-small", "act-mid"]


def test_reasoning_programs_are_paused_only_when_acting_ones_are_not_enough() -> None:
    progs = [active("r1", 400), active("r2", 300), active("act", 100, acting_s=0)]
    d = decide(progs, [BackendView(A, 600, True)], NO_DECAY)
    assert paused_ids(d) == ["act", "r2"]


def test_time_decay_avoids_pausing_for_long_idle_acting_programs() -> None:
    cfg = PolicyConfig(tau_s=10.0)
    # 800 tokens acting for 30 s weigh 800 * e^-3 ~ 40: a returning 500-token program causes no pause
    # (the engine may evict the idle cache instead); without decay the idle program is paused.
    progs = [active("idle", 800, acting_s=30.0), active("back", 500)]
    assert not decide(progs, [BackendView(A, 1000, True)], cfg)
    assert paused_ids(decide(progs, [BackendView(A, 1000, True)], NO_DECAY)) == ["idle"]


def test_decay_frees_room_by_pausing_the_decayed_program_at_once() -> None:
    # The case: a 10k backend, A (9k, in a long tool call), B (2k, ready). B is restored as soon as
    # A's decayed weight leaves room (t >= tau * ln(9/8)), and A is paused in the same round so the pool
    # is never over-committed (A's next request waits for a restore).
    cfg = PolicyConfig(tau_s=30.0, tool_aware=False, min_running=0)  # memory alone: no work conservation
    backend = [BackendView(A, 10_000, True)]
    early = decide([active("A", 9_000, acting_s=2.0, active_s=60), waiting("B", 2_000)], backend, cfg)
    assert not early  # 9000 * exp(-2/30) = 8418: no room yet
    t = 30.0 * math.log(9 / 8) + 0.5  # within one check interval of the moment decay makes room
    d = decide([active("A", 9_000, acting_s=t, active_s=60), waiting("B", 2_000)], backend, cfg)
    assert restored(d) == {"B": A}
    assert [(p.program_id, p.reason) for p in d.pauses] == [("A", PauseReason.DECAY)]
    held_after = sum(v.tokens for v in [waiting("B", 2_000)])
    assert held_after <= 10_000  # only B is left resident


def test_decayed_program_restored_recently_is_not_evicted_and_nothing_over_commits() -> None:
    cfg = PolicyConfig(tau_s=10.0, tool_aware=False, min_residency_s=5.0, min_running=0)
    progs = [active("idle", 800, acting_s=30.0, active_s=2.0), waiting("new", 500)]
    assert not decide(progs, [BackendView(A, 1000, True)], cfg)  # cooldown: no flapping
    progs = [active("idle", 400, acting_s=30.0), waiting("new", 500)]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert restored(d) == {"new": A} and not d.pauses  # fits the memory actually held: nobody paused


def test_decayed_load_still_counts_and_a_fresh_return_triggers_pauses() -> None:
    cfg = PolicyConfig(tau_s=10.0)
    progs = [active("returned", 800), active("other", 400, acting_s=0.5)]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert paused_ids(d) == ["other"]


def test_only_program_on_a_backend_is_never_paused() -> None:
    d = decide([active("huge", 5000)], [BackendView(A, 1000, True)], NO_DECAY)
    assert not d


def test_restore_prefers_reasoning_ready_and_shortest() -> None:
    cfg = PolicyConfig(time_decay=False, aging_rate=0.0)
    progs = [
        active("resident", 500),
        waiting("w-long", 400),
        waiting("w-short", 300),
        ProgramView("idle-paused", 10, Phase.ACTING, Status.PAUSED),  # nothing to run: stays queued
    ]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert [r.program_id for r in d.restores] == ["w-short"]


def test_restore_backfills_smaller_programs_that_fit() -> None:
    cfg = PolicyConfig(time_decay=False, aging_rate=0.0)
    progs = [active("resident", 500), waiting("w-small", 100), waiting("w-big", 600), waiting("w-mid", 300)]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert [r.program_id for r in d.restores] == ["w-small", "w-mid"]


def test_aging_makes_a_long_waiter_rank_before_a_fresh_short_one() -> None:
    cfg = PolicyConfig(aging_rate=0.1)
    old_long, fresh_short = waiting("long", 1000, waiting_s=100.0), waiting("short", 200)
    assert restore_score(old_long, cfg) > restore_score(fresh_short, cfg)
    assert restore_score(old_long, PolicyConfig(aging_rate=0.0)) < restore_score(fresh_short, cfg)


def test_low_watermark_hysteresis_holds_restores() -> None:
    cfg = PolicyConfig(time_decay=False, lambda_max=1.0, lambda_min=0.5)
    progs = [active("resident", 600), waiting("w", 100)]
    assert not decide(progs, [BackendView(A, 1000, True)], cfg)
    progs = [active("resident", 400), waiting("w", 100)]
    assert restored(decide(progs, [BackendView(A, 1000, True)], cfg)) == {"w": A}


def test_draining_request_of_a_paused_program_still_occupies_memory() -> None:
    draining = ProgramView("d", 600, Phase.REASONING, Status.PAUSED, backend=A)
    d = decide([draining, waiting("w", 500)], [BackendView(A, 1000, True)], NO_DECAY)
    assert not d.restores


def test_placement_prefers_previous_backend_while_prefix_is_likely_cached() -> None:
    backends = [BackendView(A, 1000, True), BackendView(B, 1000, True)]
    base = [active("on-a", 300, A), active("on-b", 100, B)]
    recent = waiting("w", 200, previous_backend=A, paused_s=5.0)
    d = decide([*base, recent], backends, NO_DECAY)
    assert restored(d) == {"w": A} and d.restores[0].affinity
    # Paused too long ago: its prefix is assumed gone, so it goes where there is most room.
    stale = waiting("w", 200, previous_backend=A, paused_s=120.0)
    d = decide([*base, stale], backends, NO_DECAY)
    assert restored(d) == {"w": B} and not d.restores[0].affinity
    # Previous backend without room: most free room elsewhere.
    full_a = [active("on-a", 900, A), active("on-b", 100, B)]
    d = decide([*full_a, recent], backends, NO_DECAY)
    assert restored(d) == {"w": B}


def test_new_program_goes_to_backend_with_most_free_capacity() -> None:
    backends = [BackendView(A, 1000, True), BackendView(B, 2000, True)]
    d = decide([active("x", 100, A), active("y", 900, B), waiting("new", 50)], backends, NO_DECAY)
    assert restored(d) == {"new": B}  # B has 1100 free, A 900


def test_global_queue_spreads_over_backends() -> None:
    backends = [BackendView(A, 1000, True), BackendView(B, 1000, True)]
    progs = [waiting(f"w{i}", 400) for i in range(4)]
    d = decide(progs, backends, NO_DECAY)
    placed = restored(d)
    assert len(placed) == 4 and sorted(placed.values()) == [A, A, B, B]


def test_down_backend_is_evacuated_and_never_used_for_placement() -> None:
    backends = [BackendView(A, 1000, False), BackendView(B, 1000, True)]
    progs = [active("on-a", 300, A), waiting("w", 200, previous_backend=A, paused_s=1.0)]
    d = decide(progs, backends, NO_DECAY)
    assert [(p.program_id, p.reason) for p in d.pauses] == [("on-a", PauseReason.BACKEND_DOWN)]
    assert restored(d) == {"w": B}
    # With every backend down nothing is placed at all.
    d = decide([waiting("w", 10)], [BackendView(A, 1000, False)], NO_DECAY)
    assert not d.restores
    # Unknown capacity counts as unusable too.
    assert not decide([waiting("w", 10)], [BackendView(A, 0, True)], NO_DECAY).restores


def test_starving_program_gets_room_reserved_and_preempts_acting_residents() -> None:
    cfg = PolicyConfig(time_decay=False, max_wait_s=30.0, min_residency_s=5.0)
    progs = [
        active("r", 400),  # reasoning: its request keeps the memory, not a victim
        active("a1", 300, acting_s=1, active_s=60),
        active("a2", 200, acting_s=1, active_s=60),
        active("fresh", 50, acting_s=1, active_s=1),  # just restored: protected
        waiting("starved", 500, waiting_s=31.0),
        waiting("short", 10),  # would fit, but may not overtake the starving program
    ]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert [(p.program_id, p.reason) for p in d.pauses] == [
        ("a2", PauseReason.STARVATION),
        ("a1", PauseReason.STARVATION),
    ]
    # The starving program goes first; "short" fits in what is left and does not delay it.
    assert [r.program_id for r in d.restores] == ["starved", "short"]


def _simulate_stream_of_short_programs(cfg: PolicyConfig, ticks: int) -> int | None:
    """Tick-level simulation: one 1,000-token backend, a long program waiting, two new 200-token programs
    arriving every tick (more demand than the backend holds) and each short one running 3 ticks.
    Returns the tick the long one was restored, None if never."""
    long_wait = 0.0
    shorts: dict[str, int] = {}  # active short program -> ticks left
    queue: list[str] = []
    for tick in range(ticks):
        queue += [f"s{tick}a", f"s{tick}b"]
        progs = [active(pid, 200) for pid in shorts]
        progs += [waiting(pid, 200, waiting_s=0.0) for pid in queue]
        progs.append(waiting("long", 700, waiting_s=long_wait))
        d = decide(progs, [BackendView(A, 1000, True)], cfg)
        for r in d.restores:
            if r.program_id == "long":
                return tick
            queue.remove(r.program_id)
            shorts[r.program_id] = 3
        shorts = {pid: left - 1 for pid, left in shorts.items() if left > 1}
        long_wait += 1.0
    return None


def test_long_program_is_restored_within_a_bound_under_a_steady_stream_of_short_ones() -> None:
    cfg = PolicyConfig(time_decay=False, aging_rate=0.1, max_wait_s=20.0)
    tick = _simulate_stream_of_short_programs(cfg, ticks=200)
    # Bound: max_wait_s plus the time for residents to finish their steps (3 ticks) plus one tick.
    assert tick is not None and tick <= 20 + 3 + 1


def test_without_aging_or_deadline_the_same_stream_starves_the_long_program() -> None:
    # The control for the test above: shortest-first alone never serves the long program.
    cfg = PolicyConfig(time_decay=False, aging_rate=0.0, max_wait_s=1e9)
    assert _simulate_stream_of_short_programs(cfg, ticks=200) is None


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="lambda_min"):
        PolicyConfig(lambda_max=0.8, lambda_min=0.9)
    with pytest.raises(ValueError):
        PolicyConfig(tau_s=0)
    with pytest.raises(ValueError):
        PolicyConfig(unknown_knob=1)  # type: ignore[call-arg]


def test_programs_in_progress_are_restored_before_newcomers_even_smaller_ones() -> None:
    cfg = PolicyConfig(time_decay=False, aging_rate=0.0)
    progs = [active("resident", 500), waiting("old", 400, in_progress=True), waiting("fresh", 50)]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert list(restored(d)) == ["old", "fresh"]  # both fit: order is in-progress first
    # When the one in progress does not fit yet, no newcomer takes the room it waits for.
    progs = [active("resident", 700), waiting("old", 400, in_progress=True), waiting("fresh", 50)]
    assert not decide(progs, [BackendView(A, 1000, True)], cfg).restores


def test_starvation_reservation_is_per_backend_not_a_global_stop() -> None:
    cfg = PolicyConfig(time_decay=False, max_wait_s=30.0)
    backends = [BackendView(A, 1000, True), BackendView(B, 400, True)]
    progs = [
        active("busy", 900, A),  # reasoning on A: nothing can be preempted there
        waiting("starved", 800, waiting_s=40.0),  # fits only A, not yet
        waiting("small", 300),  # fits B: must not wait behind the starving program
    ]
    d = decide(progs, backends, cfg)
    assert restored(d) == {"small": B}
    # Nobody else is placed on A while the starving program waits for it.
    progs = [active("busy", 500, A), waiting("starved", 800, waiting_s=40.0), waiting("tiny", 100)]
    d = decide(progs, [BackendView(A, 1000, True)], cfg)
    assert not d.restores


def test_placement_never_puts_an_oversized_program_on_a_small_backend_while_a_big_one_exists() -> None:
    backends = [BackendView(A, 1000, True), BackendView(B, 4000, True)]
    progs = [active("big-resident", 3000, B), waiting("large", 1500)]
    d = decide(progs, backends, NO_DECAY)
    assert not d.restores  # A is empty but smaller than the program: it waits for B
    d = decide([waiting("large", 1500)], backends, NO_DECAY)
    assert restored(d) == {"large": B}
    # Larger than every backend: the largest one takes it, alone.
    assert restored(decide([waiting("huge", 9000)], backends, NO_DECAY)) == {"huge": B}


def test_decode_reserve_counts_while_reasoning() -> None:
    progs = [active("r", 600, reserve=300), waiting("w", 150)]
    assert not decide(progs, [BackendView(A, 1000, True)], NO_DECAY).restores  # 600 + 300 + 150 > 1000
    progs = [active("r", 600, reserve=100), waiting("w", 150)]
    assert restored(decide(progs, [BackendView(A, 1000, True)], NO_DECAY)) == {"w": A}


def test_tool_aware_short_tool_keeps_its_room_and_long_tool_frees_it_at_once() -> None:
    cfg = PolicyConfig(tau_s=30.0, tool_pause_s=8.0, min_running=0)
    backend = [BackendView(A, 10_000, True)]
    # A short tool (expected to end in 1 s) keeps A resident even after long decay time would have freed it.
    short = active("A", 9_000, acting_s=60.0, active_s=60, tool_marked=False)
    assert not decide([short, waiting("B", 2_000)], backend, cfg)
    # A tool expected to run 20 s more frees A's room at once (no decay wait), reason "tool".
    long = active("A", 9_000, acting_s=0.5, active_s=60, tool_marked=True)
    d = decide([long, waiting("B", 2_000)], backend, cfg)
    assert restored(d) == {"B": A}
    assert [(p.program_id, p.reason) for p in d.pauses] == [("A", PauseReason.TOOL)]
    # Without pressure nobody is paused, however long the tool.
    assert not decide([long], backend, cfg)
    # tool_aware off: the same program only decays.
    assert not decide([long, waiting("B", 2_000)], backend, cfg.model_copy(update={"tool_aware": False}))


def test_programs_whose_kv_is_in_a_host_tier_restore_first() -> None:
    cfg = PolicyConfig(aging_rate=0.0)
    progs = [
        active("r", 9_000, A),
        waiting("cold", 800, in_progress=True),
        waiting("warm", 900, in_progress=True, in_host_tier=True),
    ]
    d = decide(progs, [BackendView(A, 10_000, True, host_tier_tokens=50_000)], cfg)
    assert list(restored(d)) == ["warm"]


def test_a_shared_prefix_is_counted_once_per_backend() -> None:
    # Three programs of 1,000 tokens, 600 of them the same system prompt: 1,800 tokens in the engine, not 3,000.
    shared = {"prefix_key": "sys", "prefix_tokens": 600}
    progs = [active("a", 1000, **shared), active("b", 1000, **shared), waiting("c", 1000, **shared)]
    assert restored(decide(progs, [BackendView(A, 2000, True)], NO_DECAY)) == {"c": A}
    # Without the sharing the same programs do not fit.
    plain = [active("a", 1000), active("b", 1000), waiting("c", 1000)]
    assert not decide(plain, [BackendView(A, 2000, True)], NO_DECAY).restores
    # A backend without the prefix charges it in full: c goes where the prefix already is.
    backends = [BackendView(A, 2200, True), BackendView(B, 2200, True)]
    progs = [active("a", 1000, A, **shared), active("x", 700, B), waiting("c", 1000, **shared)]
    assert restored(decide(progs, backends, NO_DECAY)) == {"c": A}


# ---- work conservation (min_running) ------------------------------------------------------------


def test_an_idle_engine_takes_the_next_ready_program_past_the_memory_limit() -> None:
    # A (900 of 1,000) is in a tool; B (300) is ready. By memory alone B waits, and the engine idles. With the
    # floor at one running request, B runs now: A's cache pays (A is paused, its next request waits).
    progs = [active("A", 900, acting_s=0.5, active_s=60), waiting("B", 300)]
    backend = [BackendView(A, 1000, True)]
    assert not decide(progs, backend, PolicyConfig(time_decay=False, min_running=0))
    d = decide(progs, backend, PolicyConfig(time_decay=False, min_running=1))
    assert restored(d) == {"B": A}
    assert [r.floor for r in d.restores] == [True]


def test_the_floor_admits_only_up_to_its_count_of_running_requests() -> None:
    # One request already runs (R): with a floor of 1 nothing more is admitted past the limit; with 2, one is.
    progs = [active("R", 400), active("A", 550, acting_s=0.5, active_s=60), waiting("B", 200), waiting("C", 200)]
    backend = [BackendView(A, 1000, True)]
    assert not decide(progs, backend, PolicyConfig(time_decay=False, min_running=1)).restores
    d = decide(progs, backend, PolicyConfig(time_decay=False, min_running=2))
    assert len(d.restores) == 1 and d.restores[0].floor


def test_the_floor_never_overfills_the_pool_with_running_requests() -> None:
    # Running requests must fit together (the engine would preempt one): R holds 700 of 1,000, B needs 400.
    progs = [active("R", 700), waiting("B", 400)]
    d = decide(progs, [BackendView(A, 1000, True)], PolicyConfig(time_decay=False, min_running=4))
    assert not d.restores


def test_the_floor_goes_to_the_least_busy_backend() -> None:
    progs = [
        active("R1", 300, backend=A),
        active("X", 700, backend=A, acting_s=0.5, active_s=60),
        active("Y", 950, backend=B, acting_s=0.5, active_s=60),
        waiting("W", 200),
    ]
    two = [BackendView(A, 1000, True), BackendView(B, 1000, True)]
    d = decide(progs, two, PolicyConfig(time_decay=False, min_running=2))
    assert restored(d) == {"W": B}  # B runs nothing; A already runs one

