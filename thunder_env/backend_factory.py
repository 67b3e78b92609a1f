"""The one place a backend is made from its config (``BackendConfig``, a tagged union on ``kind``).

A backend's module is imported only when it is chosen, so choosing one never loads another's dependencies.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .backend import SandboxBackend
from .backend_config import BackendConfig, DockerBackendConfig


def make_backend(config: BackendConfig | None = None) -> SandboxBackend:
    """The backend ``config`` describes (default: the local Docker Engine). Call it on the running
    event loop (an HTTP client needs one); close the backend (``async with`` or ``close()``)."""
    config = config or DockerBackendConfig()
    if config.kind == "docker":
        from .docker import DockerBackend  # imported only when chosen

        return DockerBackend.from_config(config)
    raise ValueError(f"unknown sandbox backend kind {config.kind!r}")  # pydantic refuses it first


@contextlib.asynccontextmanager
async def open_backend(config: BackendConfig | None = None) -> AsyncIterator[SandboxBackend]:
    """``make_backend``, closed on exit: ``async with open_backend(config) as backend: ...``."""
    backend = make_backend(config)
    try:
        yield backend
    finally:
        await backend.close()


__all__ = ["make_backend", "open_backend"]
