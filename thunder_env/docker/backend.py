"""DockerBackend: the SandboxBackend protocol on a local or remote Docker Engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiodocker
import aiohttp

from ..backend import Capability
from ..backend_config import (
    DOCKER_CONTROL_CONNECTIONS,
    DOCKER_ENGINE_TIMEOUT_S,
    DOCKER_LOG_MAX_BYTES,
    DOCKER_STREAM_CONNECTIONS,
    DockerBackendConfig,
)
from .execution import DockerExecution
from .lifecycle import DockerLifecycle
from .networks import ProgramNetworks
from .snapshots import DockerSnapshots

# Control calls must answer within engine_timeout_s: past it the engine is reported stuck
# (EngineStuckError) instead of blocking destroy and close() forever. Either client connects within this.
CONNECT_TIMEOUT_S = 10.0


class DockerBackend(DockerLifecycle, DockerExecution, DockerSnapshots):
    """Two aiodocker clients: one for control calls (with a time limit) and one for long streams
    (exec output, archives, commits; no overall limit), each with its own connection budget, so a
    hundred running Engine-API execs never starve a destroy. Use ``async with`` or ``await close()``.

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
        self._docker = aiodocker.Docker(
            url=url, timeout=aiohttp.ClientTimeout(total=engine_timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        )
        self._streams = aiodocker.Docker(url=url, timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S))
        _limit_connections(self._docker, control_connections)
        _limit_connections(self._streams, stream_connections)
        self._networks = ProgramNetworks(self._docker)
        self._oom_counts: dict[str, int] = {}
        self._log_max_bytes = log_max_bytes
        self.enforces_disk_limit = None
        self._init_agent(exec_agent, agent_run_dir, agent_cache_dir)

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
        return self._docker

    async def close(self) -> None:
        await asyncio.gather(self._docker.close(), self._streams.close())

    async def __aenter__(self) -> DockerBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _limit_connections(docker: aiodocker.Docker, limit: int) -> None:
    # aiodocker builds the connector from the URL (and rewrites the URL for it), so the budget is set
    # on the connector it made; aiohttp reads _limit on every acquire.
    if limit < 1:
        raise ValueError(f"a connection budget must be at least 1, got {limit}")
    docker.connector._limit = limit
