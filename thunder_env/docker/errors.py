"""Turning the engine's errors into Thunder's typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiodocker.exceptions import DockerError

from ..errors import BackendError, BackendUnavailableError, EngineStuckError, SandboxDeadError, SandboxNotFoundError


@asynccontextmanager
async def engine_errors(sandbox_id: str | None = None) -> AsyncIterator[None]:
    """Translate engine failures for one call; 404/409 about a sandbox become sandbox errors."""
    try:
        yield
    except DockerError as exc:
        message = str(exc.message)
        if sandbox_id is not None and exc.status == 404 and "no such container" in message.lower():
            raise SandboxNotFoundError(sandbox_id, "its container is gone") from exc
        if sandbox_id is not None and exc.status == 409 and "not running" in message.lower():
            raise SandboxDeadError(sandbox_id, message) from exc
        raise BackendError(f"Docker Engine error {exc.status}: {message}", exc.status) from exc
    except TimeoutError as exc:  # the client's time limit (aiohttp's ServerTimeoutError is one too)
        raise EngineStuckError(
            "the Docker Engine took the call but did not answer in time: dockerd may be hung or overloaded; "
            "check `docker ps`, restart dockerd if it does not answer"
        ) from exc
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise BackendUnavailableError(
            f"the Docker Engine does not answer ({exc}); start dockerd (make install does) and retry"
        ) from exc
