"""The real Docker Engine and the sandbox images every engine-backed tier needs: a missing one FAILS the test
with the fix (run `make install`), it never skips."""

from __future__ import annotations

import aiodocker
import pytest

from thunder_env.docker import DockerBackend

BASE_IMAGE = "thunder/base:latest"
PYTHON_IMAGE = "thunder/python:latest"


async def require_engine() -> None:
    try:
        async with aiodocker.Docker() as docker:
            await docker.version()
            for image in (BASE_IMAGE, PYTHON_IMAGE):
                try:
                    await docker.images.inspect(image)
                except aiodocker.DockerError:
                    pytest.fail(f"image {image} is missing: run `make install` (builds the images)", pytrace=False)
    except (aiodocker.DockerError, OSError) as exc:
        pytest.fail(f"the Docker Engine does not answer ({exc}): run `make install` as root", pytrace=False)


async def leftovers(backend: DockerBackend, namespace: str) -> list[str]:
    """Everything labelled with the namespace on the engine: containers, images (snapshots, templates), networks."""
    found = await backend.list_managed({"thunder.namespace": namespace})
    return [f"{r.kind} {r.resource_id[:12]}" for r in found]


async def engine_leftovers(namespace: str) -> list[str]:
    """``leftovers`` through a backend of its own (for tests whose servers own theirs)."""
    async with DockerBackend() as backend:
        return await leftovers(backend, namespace)
