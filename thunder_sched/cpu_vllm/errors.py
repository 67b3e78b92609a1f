"""Typed errors of the CPU vLLM helper; each message says what failed and where to look."""

from __future__ import annotations

from thunder_sched.errors import SchedulerError


class CpuVllmError(SchedulerError):
    """Root of every error raised by `thunder_sched.cpu_vllm` (part of the scheduler package)."""


class VenvError(CpuVllmError):
    """The vLLM venv could not be created, installed or verified."""


class ModelError(CpuVllmError):
    """The random-weight model could not be generated."""


class ModelSpecError(CpuVllmError, ValueError):
    """A `ModelSpec` holds values vLLM on CPU cannot serve."""


class ServerConfigError(CpuVllmError, ValueError):
    """A `VllmServerConfig` holds an impossible value (non-positive size, timeout or port out of range)."""


class ServerError(CpuVllmError):
    """The vLLM server failed to start, died, or could not be stopped."""


class ServerStartTimeout(ServerError, TimeoutError):
    """The vLLM server did not answer within the startup timeout."""
