"""A variant of the generated model whose answers end at once (end-of-sequence first), for clients that
treat an answer that never ends as a failure (Claude Code stops at its output limit with exit status 1).

Derived from the base model by `_ending_variant.py` in the vLLM venv; cached next to it, keyed by the
base directory and the deriving script, made atomically and under a lock like the base model.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from ._proc import Progress, stderr_progress
from .model import make_model_dir

DERIVER = Path(__file__).with_name("_ending_variant.py")
VARIANT_FILE = "thunder-variant.json"


async def ensure_ending_model(python: Path, base_dir: Path, *, progress: Progress = stderr_progress) -> Path:
    """The directory of `base_dir`'s ending variant, derived if missing (a few seconds). Idempotent."""
    source = await asyncio.to_thread(DERIVER.read_bytes)
    digest = hashlib.sha256(base_dir.name.encode() + b"\0" + source).hexdigest()[:8]
    target = base_dir.with_name(f"{base_dir.name}-ends-{digest}")
    await make_model_dir(
        python, (DERIVER, "--base", base_dir), target, target.with_name(f".{target.name}.lock"), VARIANT_FILE,
        what="deriving the ending model", announce="deriving a model whose answers end at once", progress=progress,
    )  # fmt: skip
    return target
