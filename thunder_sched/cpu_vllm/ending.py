"""A variant of the generated model whose answers end at once (end-of-sequence first), for clients that
treat an answer that never ends as a failure (Claude Code stops at its output limit with exit status 1).

Derived from the base model by `_ending_variant.py` in the vLLM venv; cached next to it, keyed by the
base directory and the deriving script, made atomically and under a lock like the base model.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

from thunder_common.locks import file_lock

from ._proc import Progress, run_logged, stderr_progress, tail
from .errors import ModelError

DERIVER = Path(__file__).with_name("_ending_variant.py")
VARIANT_FILE = "thunder-variant.json"


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / VARIANT_FILE).is_file() and (model_dir / "model.safetensors").is_file()


async def ensure_ending_model(python: Path, base_dir: Path, *, progress: Progress = stderr_progress) -> Path:
    """The directory of `base_dir`'s ending variant, derived if missing (a few seconds). Idempotent."""
    source = await asyncio.to_thread(DERIVER.read_bytes)
    digest = hashlib.sha256(base_dir.name.encode() + b"\0" + source).hexdigest()[:8]
    target = base_dir.with_name(f"{base_dir.name}-ends-{digest}")
    if await asyncio.to_thread(_is_complete, target):
        return target
    waiting = f"waiting for another process making the model variant {target.name}"
    async with file_lock(target.with_name(f".{target.name}.lock"), on_wait=lambda: progress(waiting)):
        if await asyncio.to_thread(_is_complete, target):
            return target
        await _derive(python, base_dir, target, progress)
    return target


async def _derive(python: Path, base_dir: Path, target: Path, progress: Progress) -> None:
    work = target.with_name(f".{target.name}.partial")
    log_path = target.with_name(f"{target.name}.log")
    for stale in (work, target):  # an incomplete earlier attempt
        await asyncio.to_thread(shutil.rmtree, stale, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    progress(f"deriving a model whose answers end at once into {target} (log: {log_path})")
    try:
        code = await run_logged(
            (python, DERIVER, "--base", base_dir, "--out", work),
            log_path=log_path,
            progress=progress,
            what="model variant",
            env=env,
        )
        if code != 0:
            raise ModelError(
                f"deriving the ending model failed (exit {code}); {log_path} ends with:\n{await tail(log_path)}"
            )
        await asyncio.to_thread(work.rename, target)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
