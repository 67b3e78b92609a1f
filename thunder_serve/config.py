"""Typed configuration of the combined server: one typed config per component, built by the CLI (or a test)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcp_server import HttpConfig, ServerConfig
from thunder_env import ManagerConfig
from thunder_env.backend_config import BackendConfig, DockerBackendConfig
from thunder_sched.config import SchedulerConfig

DEFAULT_PORT = 8400
DEFAULT_NAMESPACE = "thunder"


class CombinedConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scheduler: SchedulerConfig
    # Where to listen (host, port) and the bearer token(s) of the MCP endpoints.
    http: HttpConfig
    manager: ManagerConfig = Field(default_factory=lambda: ManagerConfig(namespace=DEFAULT_NAMESPACE))
    server: ServerConfig = Field(default_factory=ServerConfig)
    # The sandboxes' engine (a tagged union on `kind`: Docker today).
    sandbox_backend: BackendConfig = Field(default_factory=DockerBackendConfig)
    # Prepare a paused program's environment (the spec it last acquired) ahead of its restore: while it waits
    # at the head of the waiting queue (the first `prepare_ahead` programs, checked every `queue_check_s`),
    # and at the latest when it is restored.
    prepare_on_restore: bool = True
    prepare_ahead: int = Field(default=1, ge=0)
    queue_check_s: float = Field(default=0.25, gt=0)

    @model_validator(mode="after")
    def _programs_named_per_request(self) -> CombinedConfig:
        if self.server.default_program_id is not None:
            raise ValueError(
                "server.default_program_id must be None: over HTTP each request names its program "
                "(/p/<program_id>/mcp, X-Program-Id) or its MCP session is its program"
            )
        return self
