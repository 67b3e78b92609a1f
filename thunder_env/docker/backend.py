"""DockerBackend: the SandboxBackend protocol on a local or remote Docker Engine."""

from __future__ import annotations

import asyncio

import aiodocker

from .execution import DockerExecution
from .lifecycle import DockerLifecycle
from .snapshots import DockerSnapshots


class DockerBackend(DockerLifecycle, DockerExecution, DockerSnapshots):
    """One aiodocker client for every call; use ``async with`` or ``await close()``."""

    def __init__(self, url: str | None = None) -> None:
        self._docker = aiodocker.Docker(url=url)
        self._network_lock = asyncio.Lock()
        self._oom_counts: dict[str, int] = {}

    @property
    def client(self) -> aiodocker.Docker:
        return self._docker

    async def close(self) -> None:
        await self._docker.close()

    async def __aenter__(self) -> DockerBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
