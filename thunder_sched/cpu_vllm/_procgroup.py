"""Process-group helpers for stopping a server and everything it spawned (Linux /proc).

`_launch.py` has its own copy of the group scan: it runs in the vLLM venv, where this package is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path


def killpg(pgid: int, sig: signal.Signals) -> None:
    """Signal a whole process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in the group (zombies only wait for init to reap them).

    Blocking (scans /proc): call through `asyncio.to_thread` from async code.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def wait_group_gone(pgid: int, within: float) -> bool:
    """SIGKILL the group until no live member remains; False if some survive `within` seconds."""
    deadline = time.monotonic() + within
    while await asyncio.to_thread(group_alive, pgid):
        if time.monotonic() > deadline:
            return False
        killpg(pgid, signal.SIGKILL)
        await asyncio.sleep(0.2)
    return True
