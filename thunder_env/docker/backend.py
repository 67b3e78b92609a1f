"""DockerBackend: the SandboxBackend protocol on a local or remote Docker Engine, composed of parts.

Each part is an object of its own that receives the one shared ``DockerClients`` (and the parts it
calls) in its constructor: ``DockerLifecycle`` (containers), ``DockerExecution`` (commands, archives),
``DockerSnapshots`` (commits, /system/df), ``ExecAgents`` (the exec agents' host side) and
``ProgramNetworks``. DockerBackend holds them and implements the protocol by delegation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import aiodocker

from ..backend import BackendSandbox, Capability, EngineDiskUsage, ExecRequest, ManagedResource, OutputCallback
from ..backend_config import (
    DOCKER_CONTROL_CONNECTIONS,
    DOCKER_ENGINE_TIMEOUT_S,
    DOCKER_LOG_MAX_BYTES,
    DOCKER_STREAM_CONNECTIONS,
    DockerBackendConfig,
)
from ..results import ExecResult
from ..spec import SandboxSpec
from .agent_client import AgentEndpoint
from .agent_support import ExecAgents
from .clients import DockerClients
from .execution import DockerExecution
from .lifecycle import DockerLifecycle
from .networks import ProgramNetworks
from .snapshots import DockerSnapshots


class DockerBackend:
    """Two aiodocker clients (``DockerClients``): control calls with a time limit, long streams without
    one, each with its own connection budget. Use ``async with`` or ``await close()``.

    ``exec_agent``: run commands through the agent inside each sandbox (a local engine only); its
    per-sandbox socket directories live under ``agent_run_dir``, its binary under ``agent_cache_dir``.
    ``log_max_bytes``: the size of each sandbox's one container log file (the engine drops older lines).
    """

    # Snapshots are image commits, disk accounting is /system/df, the agent keeps host directories.
    capabilities = frozenset({Capability.SNAPSHOTS, Capability.DISK_ACCOUNTING, Capability.HOST_AGENT})

    def __init__(
        self,
        url: str | None = None,
        *,
        exec_agent: bool = True,
        agent_run_dir: Path | None = None,
        agent_cache_dir: Path | None = None,
        log_max_bytes: int = DOCKER_LOG_MAX_BYTES,
        engine_timeout_s: float = DOCKER_ENGINE_TIMEOUT_S,
        control_connections: int = DOCKER_CONTROL_CONNECTIONS,
        stream_connections: int = DOCKER_STREAM_CONNECTIONS,
    ) -> None:
        self.clients = DockerClients.connect(
            url,
            engine_timeout_s=engine_timeout_s,
            control_connections=control_connections,
            stream_connections=stream_connections,
        )
        self.agents = ExecAgents(self.clients, exec_agent, agent_run_dir, agent_cache_dir)
        self.networks = ProgramNetworks(self.clients)
        self.lifecycle = DockerLifecycle(self.clients, self.networks, self.agents, log_max_bytes)
        self.execution = DockerExecution(self.clients, self.agents)
        self.snapshots = DockerSnapshots(self.clients)

    @classmethod
    def from_config(cls, config: DockerBackendConfig) -> DockerBackend:
        return cls(
            config.url,
            exec_agent=config.exec_agent,
            agent_run_dir=config.agent_run_dir,
            agent_cache_dir=config.agent_cache_dir,
            log_max_bytes=config.log_max_bytes,
            engine_timeout_s=config.engine_timeout_s,
            control_connections=config.control_connections,
            stream_connections=config.stream_connections,
        )

    @property
    def client(self) -> aiodocker.Docker:
        """The control client (calls with a time limit)."""
        return self.clients.control

    async def close(self) -> None:
        await self.clients.close()

    async def __aenter__(self) -> DockerBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ lifecycle (required)

    async def create(self, sandbox_id: str, spec: SandboxSpec, labels: Mapping[str, str]) -> BackendSandbox:
        return await self.lifecycle.create(sandbox_id, spec, labels)

    async def destroy(self, sandbox_id: str) -> None:
        try:
            await self.lifecycle.destroy(sandbox_id)
        finally:
            self.execution.forget(sandbox_id)

    async def is_running(self, sandbox_id: str) -> bool:
        return await self.lifecycle.is_running(sandbox_id)

    async def list_managed(self, labels: Mapping[str, str]) -> list[ManagedResource]:
        return await self.lifecycle.list_managed(labels)

    async def remove_managed(self, resource: ManagedResource) -> None:
        await self.lifecycle.remove_managed(resource)

    async def retry_removals(self) -> list[str]:
        return await self.lifecycle.retry_removals()

    # ----------------------------------------------------------------- operations (required)

    async def exec(
        self, sandbox_id: str, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecResult:
        return await self.execution.exec(sandbox_id, request, on_output)

    async def kill_marked(self, sandbox_id: str, marker: str, user: str = "") -> None:
        await self.execution.kill_marked(sandbox_id, marker, user)

    async def get_archive(self, sandbox_id: str, path: str, max_bytes: int | None = None) -> bytes:
        return await self.execution.get_archive(sandbox_id, path, max_bytes)

    async def put_archive(self, sandbox_id: str, dest_dir: str, data: bytes) -> None:
        await self.execution.put_archive(sandbox_id, dest_dir, data)

    # ------------------------------------------------------------------- snapshots (capability)

    async def commit(self, sandbox_id: str, snapshot_ref: str, labels: Mapping[str, str], pause: bool) -> str:
        return await self.snapshots.commit(sandbox_id, snapshot_ref, labels, pause)

    async def remove_image(self, image_ref: str) -> bool:
        return await self.snapshots.remove_image(image_ref)

    # ------------------------------------------------------------- disk accounting (capability)

    @property
    def enforces_disk_limit(self) -> bool | None:
        return self.lifecycle.enforces_disk_limit

    async def disk_usage(self) -> EngineDiskUsage:
        return await self.snapshots.disk_usage()

    async def storage_path(self) -> str | None:
        return await self.lifecycle.storage_path()

    # ---------------------------------------------------------------- host agent (capability)

    async def remove_orphan_dirs(self, namespace: str, live_sandbox_ids: Collection[str]) -> list[str]:
        return await self.agents.remove_orphan_dirs(namespace, live_sandbox_ids)

    @property
    def exec_agent(self) -> bool:
        """Whether commands go through the agent in each sandbox (a local engine, and asked for)."""
        return self.agents.enabled

    @property
    def agent_run_dir(self) -> Path:
        return self.agents.run_dir

    @property
    def agent_execs(self) -> int:
        """Commands the agent ran."""
        return self.agents.agent_execs

    @property
    def fallback_execs(self) -> int:
        """Commands meant for the agent that went through the Engine API."""
        return self.agents.fallback_execs

    def agent_socket(self, sandbox_id: str) -> AgentEndpoint | None:
        """The sandbox's agent (None: its commands take the Engine API)."""
        return self.agents.socket(sandbox_id)

    def agent_unresponsive(self, sandbox_id: str) -> bool:
        """Whether the sandbox's agent was given up on (its commands take the Engine API)."""
        return self.agents.unresponsive(sandbox_id)
