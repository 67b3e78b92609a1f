"""A random-weight Llama with a locally trained tokenizer, generated without downloads and cached by spec.

Generation runs `_generate_model.py` with the vLLM venv's Python, since torch and transformers live there
and not in the project venv.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from thunder_common.locks import file_lock

from ._proc import Progress, run_logged, stderr_progress, tail
from .errors import ModelError, ModelSpecError

GENERATOR = Path(__file__).with_name("_generate_model.py")
SPEC_FILE = "thunder-spec.json"
_DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the generated model. The defaults prefill 2k tokens in about 0.7 s on 2 CPU cores."""

    hidden_size: int = 1024
    num_layers: int = 8
    intermediate_size: int = 2816
    num_heads: int = 16
    num_kv_heads: int = 1
    head_dim: int = 64
    max_position_embeddings: int = 8192
    vocab_size: int = 16384
    seed: int = 0
    dtype: str = "bfloat16"
    corpus_lines: int = 60_000
    rope_theta: float = 10_000.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.head_dim < 64:
            raise ModelSpecError(f"head_dim {self.head_dim} < 64: vLLM's CPU attention needs at least 64")
        if self.num_heads % self.num_kv_heads:
            raise ModelSpecError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.dtype not in _DTYPES:
            raise ModelSpecError(f"dtype {self.dtype!r} is not one of {_DTYPES}")
        if self.vocab_size < 1024:
            raise ModelSpecError(f"vocab_size {self.vocab_size} < 1024 leaves no room for merges beyond bytes")
        for field in ("hidden_size", "num_layers", "intermediate_size", "max_position_embeddings", "corpus_lines"):
            if getattr(self, field) <= 0:
                raise ModelSpecError(f"{field} must be positive, got {getattr(self, field)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes (keys and values of every layer)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * (2 if self.dtype == "bfloat16" else 4)


def spec_digest(spec: ModelSpec, generator_source: bytes) -> str:
    """Cache key: the spec and the generator's code, so editing either yields a new model directory."""
    digest = hashlib.sha256(spec.to_json().encode())
    digest.update(generator_source)
    return digest.hexdigest()[:16]


def _is_complete(model_dir: Path, marker: str) -> bool:
    return (model_dir / marker).is_file() and (model_dir / "model.safetensors").is_file()


async def ensure_model(
    python: Path,
    models_dir: Path,
    spec: ModelSpec | None = None,
    *,
    progress: Progress = stderr_progress,
) -> Path:
    """Return the directory of the model for `spec` under `models_dir`, generating it if missing.

    `python` is the vLLM venv's interpreter. Idempotent and safe across processes; quick when cached.
    Raises `ModelError` with the generator's output when generation fails.
    """
    spec = spec or ModelSpec()
    source = await asyncio.to_thread(GENERATOR.read_bytes)
    digest = spec_digest(spec, source)
    target = models_dir / f"thunder-tiny-{digest}"
    # Offline flags make any attempted download fail loudly instead of reaching out.
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = (GENERATOR, "--spec", spec.to_json())
    await make_model_dir(
        python, args, target, models_dir / f".{digest}.lock", SPEC_FILE,
        what="model generation", announce="generating a random-weight Llama (about 20 s)",
        progress=progress, env=offline,
    )  # fmt: skip
    return target


async def make_model_dir(
    python: Path,
    args: Sequence[str | Path],
    target: Path,
    lock: Path,
    marker: str,
    *,
    what: str,
    announce: str,
    progress: Progress,
    env: Mapping[str, str] | None = None,
) -> None:
    """Make the model directory `target` once, across processes: `python args... --out <work>` in the vLLM venv
    writes it into a work directory renamed into place (readers never see a half-written model). Complete once
    `marker` and the weights are there; raises `ModelError` with the log's tail when the script fails."""
    if await asyncio.to_thread(_is_complete, target, marker):
        return
    waiting = f"waiting for another process that holds {lock} ({what})"
    async with file_lock(lock, on_wait=lambda: progress(waiting)):
        if await asyncio.to_thread(_is_complete, target, marker):
            return
        work = target.with_name(f".{target.name}.partial")
        log_path = target.with_name(f"{target.name}.log")
        for stale in (work, target):  # an incomplete earlier attempt
            await asyncio.to_thread(shutil.rmtree, stale, ignore_errors=True)
        progress(f"{announce} into {target} (log: {log_path})")
        try:
            code = await run_logged(
                (python, *args, "--out", work),
                log_path=log_path,
                progress=progress,
                what=what,
                env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})},
            )
            if code != 0:
                raise ModelError(f"{what} failed (exit {code}); {log_path} ends with:\n{await tail(log_path)}")
            await asyncio.to_thread(work.rename, target)
            progress(f"model ready at {target}")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
