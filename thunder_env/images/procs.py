"""Child processes for builds: streamed output, a bounded tail kept for errors, no orphans.

Each child runs in its own session so that cancelling a build (Ctrl-C, a timeout) ends the whole
process tree, e.g. debootstrap and the dpkg/chroot processes it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_TERM_GRACE_S = 10.0


@dataclass(frozen=True)
class ProcResult:
    returncode: int
    tail: tuple[str, ...]
    output: str


async def stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _TERM_GRACE_S)


async def run(
    argv: Sequence[str],
    *,
    on_line: Callable[[str], None] | None = None,
    tail_lines: int = 40,
    keep_output: bool = False,
) -> ProcResult:
    """Run ``argv`` with stdout and stderr merged; ``on_line`` sees each line as it comes.

    Raises FileNotFoundError/PermissionError when the program cannot be started. When the caller
    is cancelled (or its ``asyncio.timeout`` expires), the process group is ended first.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=tail_lines)
    kept: list[str] = []
    assert proc.stdout is not None
    try:
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            if keep_output:
                kept.append(line)
            if on_line is not None:
                on_line(line)
        returncode = await proc.wait()
    except BaseException:
        await asyncio.shield(stop_group(proc))
        raise
    return ProcResult(returncode, tuple(tail), "\n".join(kept))
