"""Snapshot collection order: pure logic, no engine."""

from __future__ import annotations

from thunder_env.snapshots import GcCandidate, plan_gc

MB = 1 << 20


def candidate(sid: str, created: float, *, in_use: bool = False, held: bool = True, size: int = MB) -> GcCandidate:
    return GcCandidate(sid, created, in_use=in_use or False, held=held or in_use, unique_bytes=size)


def test_unheld_snapshots_always_go_even_without_budget() -> None:
    plan = plan_gc([candidate("a", 1, held=False), candidate("b", 2, in_use=True)], 10 * MB, None)
    assert plan.remove == ("a",)
    assert not plan.over_budget


def test_under_budget_keeps_cached_snapshots() -> None:
    plan = plan_gc([candidate("a", 1), candidate("b", 2)], 5 * MB, 8 * MB)
    assert plan.remove == ()
    assert plan.used_after == 5 * MB


def test_over_budget_evicts_cached_oldest_first_and_stops_when_under() -> None:
    cands = [candidate("new", 30), candidate("old", 10), candidate("mid", 20), candidate("used", 5, in_use=True)]
    plan = plan_gc(cands, 10 * MB, 8 * MB)
    assert plan.remove == ("old", "mid")
    assert plan.used_after == 8 * MB
    assert not plan.over_budget


def test_referenced_snapshots_are_never_removed_and_the_overrun_is_reported() -> None:
    cands = [candidate("a", 1, in_use=True, size=5 * MB), candidate("b", 2, in_use=True, size=5 * MB)]
    plan = plan_gc(cands, 10 * MB, 1 * MB)
    assert plan.remove == ()
    assert plan.over_budget


def test_unheld_ones_count_towards_the_budget_before_cached_ones() -> None:
    cands = [candidate("cached", 1, size=4 * MB), candidate("orphan", 2, held=False, size=4 * MB)]
    plan = plan_gc(cands, 10 * MB, 5 * MB)
    assert plan.remove == ("orphan", "cached")
    plan = plan_gc(cands, 10 * MB, 6 * MB)
    assert plan.remove == ("orphan",)


def test_there_is_a_disk_budget_by_default() -> None:
    # Unreferenced template snapshots are evicted under it (tests/docker/test_snapshots.py shows eviction).
    from thunder_env import ManagerConfig

    budget = ManagerConfig().disk_budget_bytes
    assert budget is not None and budget > 0
