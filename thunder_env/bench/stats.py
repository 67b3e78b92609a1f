"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..docker.agent_support import OWNER_SUFFIX


def p50_ms(samples_s: list[float]) -> float:
    return round(statistics.median(samples_s) * 1000, 2) if samples_s else float("nan")


def p95_ms(samples_s: list[float]) -> float:
    if not samples_s:
        return float("nan")
    ordered = sorted(samples_s)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 2)


def count_entries(directory: Path) -> int:
    """Sandboxes of a run whose host directory (exec agent socket) or its owner file is still present."""
    if not directory.exists():
        return 0
    return len({entry.name.removesuffix(OWNER_SUFFIX) for entry in directory.iterdir()})
