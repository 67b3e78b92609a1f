"""One call that makes everything a CPU vLLM server needs: the venv and the model, under one cache root."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._proc import Progress, stderr_progress
from .model import ModelSpec, ensure_model
from .venv import VLLM_REQUIREMENT, ensure_venv

CACHE_ENV = "THUNDER_CACHE"


def cache_root_from_env(env: Mapping[str, str]) -> Path:
    """The cache root: $THUNDER_CACHE, else ~/.cache/thunder. For entry points only (CLI, test setup)."""
    value = env.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "thunder"


@dataclass(frozen=True)
class CachePaths:
    root: Path

    @property
    def venv_dir(self) -> Path:
        return self.root / "vllm-venv"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"


@dataclass(frozen=True)
class PreparedVllm:
    """What `CpuVllmServer` needs: the venv's Python and a model directory."""

    python: Path
    model_dir: Path
    logs_dir: Path


async def ensure_cpu_vllm(
    paths: CachePaths,
    spec: ModelSpec | None = None,
    *,
    requirement: str = VLLM_REQUIREMENT,
    progress: Progress = stderr_progress,
) -> PreparedVllm:
    """Ensure the vLLM venv and the model exist (installing/generating on first use); idempotent."""
    venv = await ensure_venv(paths.venv_dir, requirement=requirement, progress=progress)
    model_dir = await ensure_model(venv.python, paths.models_dir, spec, progress=progress)
    return PreparedVllm(python=venv.python, model_dir=model_dir, logs_dir=paths.logs_dir)
