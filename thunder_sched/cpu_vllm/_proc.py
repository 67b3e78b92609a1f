"""Async helpers shared by the venv, model and server modules: logged subprocesses, log tails (file locks:
thunder_common.locks)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Default progress reporter: one prefixed line on stderr."""
    print(f"[cpu-vllm] {message}", file=sys.stderr, flush=True)


def read_tail(path: Path, max_lines: int = 40, max_bytes: int = 16_384) -> str:
    """Last lines of a log file (blocking: call through `asyncio.to_thread` from async code)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, offset: int) -> str:
    """A file's text from byte `offset` on (blocking)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


async def tail(path: Path, max_lines: int = 40) -> str:
    return await asyncio.to_thread(read_tail, path, max_lines)


async def run_logged(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    progress: Progress,
    what: str,
    env: Mapping[str, str] | None = None,
    heartbeat: float = 30.0,
) -> int:
    """Run a command with its output appended to `log_path`; report progress every `heartbeat` seconds.

    Returns the exit code. If the caller is cancelled, the command is killed before re-raising.
    """
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    log = await asyncio.to_thread(log_path.open, "ab")
    try:
        log.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )
    finally:
        log.close()  # the child holds its own descriptor
    started = time.monotonic()
    try:
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(proc.wait()), heartbeat)
            except TimeoutError:
                last = (await tail(log_path, 1)).strip()[:120]
                progress(f"{what}: still running after {time.monotonic() - started:.0f} s ({last})")
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise


