"""Which sandbox backend to run, as a typed config: a tagged union on ``kind`` (Docker today).

Entry points (CLIs, benchmarks, the combined server) build a ``BackendConfig`` and call
``backend_factory.make_backend``; library code never names a concrete backend. This module imports no
backend (a backend imports its config from here). Environment variables are read by the entry points,
not here (aiodocker's own ``DOCKER_HOST`` fallback aside: ``url=None``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# The Docker backend's defaults, kept here so a config reads complete without importing the backend.
DOCKER_ENGINE_TIMEOUT_S = 120.0
DOCKER_CONTROL_CONNECTIONS = 32
DOCKER_STREAM_CONNECTIONS = 64
DOCKER_LOG_MAX_BYTES = 1 << 20


class DockerBackendConfig(BaseModel):
    """A Docker Engine reached through aiodocker (never the CLI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["docker"] = "docker"
    # unix:///var/run/docker.sock, tcp://host:2376...; None: $DOCKER_HOST, else the local socket.
    url: str | None = None
    # Run commands through the agent in each sandbox (a local engine only; remote engines use the Engine API).
    exec_agent: bool = True
    agent_run_dir: Path | None = None  # per-sandbox socket directories (default /run/thunder)
    agent_cache_dir: Path | None = None  # where the agent binary is built
    log_max_bytes: int = Field(default=DOCKER_LOG_MAX_BYTES, ge=4096)  # each sandbox's one log file
    # Control calls (create, inspect, remove, list) past this are reported stuck (EngineStuckError).
    engine_timeout_s: float = Field(default=DOCKER_ENGINE_TIMEOUT_S, gt=0)
    control_connections: int = Field(default=DOCKER_CONTROL_CONNECTIONS, ge=1)
    stream_connections: int = Field(default=DOCKER_STREAM_CONNECTIONS, ge=1)


# One member today; a second backend adds its config here (``DockerBackendConfig | OtherConfig``).
BackendConfig = Annotated[DockerBackendConfig, Field(discriminator="kind")]


__all__ = ["BackendConfig", "DockerBackendConfig"]
