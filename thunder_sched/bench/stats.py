"""The protocol's arithmetic, pure: run order, percentiles, paired ratios, the cap grid, the gap closed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


def abba_order(modes: Sequence[str], round_index: int) -> list[str]:
    """Even rounds run `modes` in order, odd rounds reversed: a drift in machine load over the session
    weighs on every mode alike over each pair of rounds."""
    return list(modes) if round_index % 2 == 0 else list(reversed(modes))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def paired_ratios(rounds: Sequence[Mapping[str, float]], num: str, den: str) -> list[float]:
    """num / den within each round (the two runs closest in time), for rounds that have both."""
    return [r[num] / r[den] for r in rounds if num in r and den in r and r[den] > 0]


def median_and_min(values: Sequence[float]) -> tuple[float | None, float | None]:
    return (statistics.median(values), min(values)) if values else (None, None)


def cap_grid(programs: int) -> list[int]:
    """Admission caps to try: P/4, P/3, P/2 rounded half up, distinct, at least 1."""
    return sorted({max(1, math.floor(programs / d + 0.5)) for d in (4, 3, 2)})


def best_of(grid: Mapping[int, float]) -> int:
    """The cap with the highest steps/min (the smaller on a tie)."""
    return max(sorted(grid), key=lambda cap: grid[cap])


def gap_closed(thunder: float, direct: float, ceiling: float) -> float | None:
    """Share of the way from direct to the all-in-cache ceiling that thunder covers; None when the
    ceiling is not above direct (then there is no gap to close)."""
    if ceiling <= direct:
        return None
    return (thunder - direct) / (ceiling - direct)
