"""Process-group helpers for stopping a server and everything it spawned (Linux /proc).

The group scan is thunder_common.procfs's; `_launch.py` has its own copy: it runs in the vLLM venv, where
the repository's packages are absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from thunder_common.procfs import group_members


def killpg(pgid: int, sig: signal.Signals) -> None:
    """Signal a whole process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in the group (zombies only wait for init to reap them).

    Blocking (scans /proc): call through `asyncio.to_thread` from async code.
    """
    return bool(group_members(pgid))


async def wait_group_gone(pgid: int, within: float) -> bool:
    """SIGKILL the group until no live member remains; False if some survive `within` seconds."""
    deadline = time.monotonic() + within
    while await asyncio.to_thread(group_alive, pgid):
        if time.monotonic() > deadline:
            return False
        killpg(pgid, signal.SIGKILL)
        await asyncio.sleep(0.2)
    return True
