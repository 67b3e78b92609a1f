"""The one pair of aiodocker clients every part of the Docker backend shares, handed to each explicitly."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiodocker
import aiohttp

# Either client connects within this long; control calls must also answer within the engine timeout.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class DockerClients:
    """``control``: calls with an overall time limit (create, inspect, remove, list: past it the engine is
    reported stuck). ``streams``: long streams with none (exec output, archives, commits). Each has its
    own connection budget, so a hundred running Engine-API execs never starve a destroy."""

    control: aiodocker.Docker
    streams: aiodocker.Docker

    @classmethod
    def connect(
        cls, url: str | None, *, engine_timeout_s: float, control_connections: int, stream_connections: int
    ) -> DockerClients:
        """Both clients (no engine call yet); on the running event loop, which their sessions need."""
        for limit in (control_connections, stream_connections):
            if limit < 1:
                raise ValueError(f"a connection budget must be at least 1, got {limit}")
        control = aiodocker.Docker(
            url=url, timeout=aiohttp.ClientTimeout(total=engine_timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        )
        streams = aiodocker.Docker(url=url, timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S))
        _limit_connections(control, control_connections)
        _limit_connections(streams, stream_connections)
        return cls(control, streams)

    @property
    def local(self) -> bool:
        """Whether the engine is on this host (a Unix socket): host paths then mean the same to both."""
        return str(self.control.docker_host).startswith("unix://")

    async def close(self) -> None:
        await asyncio.gather(self.control.close(), self.streams.close())


def _limit_connections(docker: aiodocker.Docker, limit: int) -> None:
    # aiodocker builds the connector from the URL (and rewrites the URL for it), so the budget is set
    # on the connector it made; aiohttp reads _limit on every acquire.
    docker.connector._limit = limit
