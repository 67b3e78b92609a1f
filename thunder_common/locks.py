"""One holder at a time across processes (an image build per recipe, a vLLM venv install, a model's
generation): an advisory lock file, waited on without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path


@contextlib.asynccontextmanager
async def file_lock(
    path: Path, on_wait: Callable[[], None] | None = None, *, wait: bool = True, poll_s: float = 0.25
) -> AsyncIterator[bool]:
    """Hold an exclusive ``flock`` on ``path``; the kernel drops it if the process dies.

    Yields True once held. With ``wait=False`` it yields False at once when another holds it.
    """
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                if not waiting and on_wait is not None:
                    on_wait()
                waiting = True
                await asyncio.sleep(poll_s)
        yield True
    finally:
        os.close(fd)
