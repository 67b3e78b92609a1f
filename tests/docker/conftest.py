"""Fixtures for tests against the real Docker Engine.

A missing engine or image FAILS the tests with the reason (run `make install`); it never skips.
Every manager made here uses its own namespace, and the test fails if anything labelled with that
namespace is still present once the manager is closed: leaks are test failures.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend

from ..engine import BASE_IMAGE, PYTHON_IMAGE, leftovers, require_engine

__all__ = ["BASE_IMAGE", "PYTHON_IMAGE", "leftovers"]  # re-exported: the Docker and MCP tests import them here


@pytest.fixture
async def backend() -> AsyncIterator[DockerBackend]:
    await require_engine()
    async with DockerBackend() as docker_backend:
        yield docker_backend


ManagerFactory = Callable[..., Awaitable[EnvManager]]


@pytest.fixture
async def make_manager(backend: DockerBackend) -> AsyncIterator[ManagerFactory]:
    made: list[EnvManager] = []
    namespaces: set[str] = set()

    async def factory(**config: object) -> EnvManager:
        config.setdefault("namespace", "test-" + secrets.token_hex(4))
        namespaces.add(str(config["namespace"]))
        manager = EnvManager(backend, ManagerConfig(**config))  # type: ignore[arg-type]
        await manager.start()
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.close()
    for namespace in namespaces:
        left = await leftovers(backend, namespace)
        assert not left, f"leaked after close: {left}"
        # The exec agents' socket directories go with their sandboxes.
        assert not (backend.agent_run_dir / namespace).exists(), f"host directories of {namespace} leaked"


@pytest.fixture
async def manager(make_manager: ManagerFactory) -> EnvManager:
    return await make_manager()


@pytest.fixture
def base_spec() -> SandboxSpec:
    return SandboxSpec(image=BASE_IMAGE, memory_bytes=256 << 20, pids_limit=128)


@pytest.fixture
def python_spec() -> SandboxSpec:
    return SandboxSpec(image=PYTHON_IMAGE, memory_bytes=512 << 20)
