"""Building the agent: one static binary per source hash, cached on the host.

Containers bind-mount the cached file read-only, so a binary is never rewritten in place: a new
source makes a new ``agent-<hash>`` directory, published by an atomic rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from ..errors import EnvError

DEFAULT_CACHE_DIR = Path("/var/lib/thunder")
BINARY_NAME = "thunder-agent"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra")
GCC_HINT = "apt-get install gcc libc6-dev"


class AgentBuildError(EnvError):
    """The agent binary could not be built (no compiler, no static libc, a compile error)."""


def agent_source() -> bytes:
    return resources.files(__package__).joinpath("agent.c").read_bytes()


def source_hash(source: bytes | None = None) -> str:
    digest = hashlib.sha256(source if source is not None else agent_source())
    digest.update(" ".join(CFLAGS).encode())
    return digest.hexdigest()[:16]


def binary_path(cache_dir: Path = DEFAULT_CACHE_DIR, source: bytes | None = None) -> Path:
    return cache_dir / f"agent-{source_hash(source)}" / BINARY_NAME


async def ensure_agent_binary(cache_dir: Path | None = None, *, compiler: str = "gcc") -> Path:
    """The path of the built agent, compiling it first if this source has no binary yet."""
    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    source = agent_source()
    target = binary_path(cache_dir, source)
    if await asyncio.to_thread(_is_executable, target):
        return target
    gcc = shutil.which(compiler)
    if gcc is None:
        raise AgentBuildError(f"{compiler} is not installed, so the sandbox exec agent cannot be built: {GCC_HINT}")
    await asyncio.to_thread(cache_dir.mkdir, mode=0o755, parents=True, exist_ok=True)
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".agent-build-", dir=cache_dir))
    try:
        src = staging / "agent.c"
        await asyncio.to_thread(src.write_bytes, source)
        process = await asyncio.create_subprocess_exec(
            gcc,
            *CFLAGS,
            "-o",
            str(staging / BINARY_NAME),
            str(src),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            text = output.decode(errors="replace").strip()
            hint = f" (is libc6-dev installed? {GCC_HINT})" if "cannot find -lc" in text else ""
            raise AgentBuildError(f"compiling the sandbox exec agent failed{hint}:\n{text[-4000:]}")
        await asyncio.to_thread(_publish, staging, target)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    return target


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _publish(staging: Path, target: Path) -> None:
    (staging / BINARY_NAME).chmod(0o755)  # unprivileged sandbox users run it too
    (staging / "agent.c").unlink()
    staging.chmod(0o755)
    try:
        staging.rename(target.parent)
    except OSError:
        if not _is_executable(target):  # not a concurrent build that won the race
            raise
