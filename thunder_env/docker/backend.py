"""DockerBackend: the SandboxBackend protocol on a local or remote Docker Engine."""

from __future__ import annotations

from pathlib import Path

import aiodocker

from .execution import DockerExecution
from .lifecycle import DEFAULT_LOG_MAX_BYTES, DockerLifecycle
from .networks import ProgramNetworks
from .snapshots import DockerSnapshots


class DockerBackend(DockerLifecycle, DockerExecution, DockerSnapshots):
    """One aiodocker client for every call; use ``async with`` or ``await close()``.

    ``exec_agent``: run commands through the agent inside each sandbox (a local engine only); its
    per-sandbox socket directories live under ``agent_run_dir``, its binary under ``agent_cache_dir``.
    ``log_max_bytes``: the size of each sandbox's one container log file (the engine drops older lines).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        exec_agent: bool = True,
        agent_run_dir: Path | None = None,
        agent_cache_dir: Path | None = None,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    ) -> None:
        self._docker = aiodocker.Docker(url=url)
        self._networks = ProgramNetworks(self._docker)
        self._oom_counts: dict[str, int] = {}
        self._log_max_bytes = log_max_bytes
        self.enforces_disk_limit = None
        self._init_agent(exec_agent, agent_run_dir, agent_cache_dir)

    @property
    def client(self) -> aiodocker.Docker:
        return self._docker

    async def close(self) -> None:
        await self._docker.close()

    async def __aenter__(self) -> DockerBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
