"""CPU seconds used by the vLLM server's processes: a per-step cost that machine contention hardly moves."""

from __future__ import annotations

import os

import psutil


def group_cpu_seconds(pgid: int | None) -> float | None:
    """User + system CPU time of every live process in process group `pgid` (None if unknown)."""
    if pgid is None:
        return None
    total = 0.0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            times = proc.cpu_times()
            total += times.user + times.system
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return total
