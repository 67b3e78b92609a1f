"""Demand-based pool sizing: pure logic, no engine."""

from __future__ import annotations

import pytest

from thunder_env.pools import DemandTracker, target_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "refill_s", "min_size", "max_size", "expected"),
    [
        (0.0, 0.5, 0, 10, 0),  # no demand, no floor: empty
        (0.0, 0.5, 2, 10, 2),  # no demand: the floor
        (4.0, 0.5, 0, 10, 2),  # 4/s while a refill takes 0.5 s: 2 in flight
        (4.0, 0.6, 0, 10, 3),  # rounded up: never short by a fraction
        (100.0, 1.0, 0, 10, 10),  # capped by max
        (1.0, None, 0, 10, 1),  # demand but no refill measured yet: one, to measure
        (1.0, None, 3, 10, 3),
        (5.0, 1.0, 8, 4, 4),  # a min above max is clamped to max
    ],
)
def test_target_size(rate: float, refill_s: float | None, min_size: int, max_size: int, expected: int) -> None:
    assert target_size(rate, refill_s, min_size, max_size) == expected


def test_demand_counts_only_the_window() -> None:
    clock = FakeClock()
    demand = DemandTracker(window_s=10.0, clock=clock)
    for _ in range(5):
        demand.record()
    assert demand.rate() == pytest.approx(0.5)
    clock.now += 6
    for _ in range(5):
        demand.record()
    assert demand.rate() == pytest.approx(1.0)
    clock.now += 5  # the first five fall out of the window
    assert demand.rate() == pytest.approx(0.5)
    clock.now += 100
    assert demand.rate() == 0.0


def test_target_follows_demand_up_and_down() -> None:
    clock = FakeClock()
    demand = DemandTracker(window_s=10.0, clock=clock)
    sizes = []
    for burst in (0, 20, 60, 0):
        for _ in range(burst):
            demand.record()
        sizes.append(target_size(demand.rate(), 1.5, 1, 8))
        clock.now += 11
    assert sizes == [1, 3, 8, 1]
