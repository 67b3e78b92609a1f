"""Snapshots on Docker: a commit is one image layer on top of the sandbox's image layers (overlay2
stores only the difference), and the engine's ``/system/df`` tells what each layer costs on disk."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..backend import EngineContainerUsage, EngineDiskUsage, EngineImageUsage
from ..errors import BackendError
from .clients import DockerClients
from .errors import engine_errors
from .lifecycle import container_name


class DockerSnapshots:
    def __init__(self, clients: DockerClients) -> None:
        self._docker = clients.control
        self._streams = clients.streams  # a commit copies the whole writable layer: no overall time limit

    async def commit(self, sandbox_id: str, snapshot_ref: str, labels: Mapping[str, str], pause: bool) -> str:
        repository, _, tag = snapshot_ref.rpartition(":")
        container = self._streams.containers.container(container_name(sandbox_id))
        async with engine_errors(sandbox_id):
            # Only Labels is given: the engine fills every other field (Cmd, Env...) from the container,
            # and merges the container's labels under ours.
            result = await container.commit(
                repository=repository, tag=tag, pause=pause, config={"Labels": dict(labels)}
            )
        return str(result["Id"])

    async def remove_image(self, image_ref: str) -> bool:
        try:
            async with engine_errors():
                # Not forced: an image a container still runs on must fail loudly, not vanish half-way.
                await self._docker.images.delete(image_ref, force=False, noprune=False)
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def disk_usage(self) -> EngineDiskUsage:
        # The engine runs one /system/df at a time and refuses a second with a 500 (another manager or a
        # `docker system df` on the same engine): wait for the running one instead of failing the caller.
        for attempt in range(DF_BUSY_RETRIES + 1):
            try:
                async with engine_errors():
                    raw = await self._docker._query_json("system/df", method="GET")
                return parse_system_df(raw)
            except BackendError as exc:
                if attempt == DF_BUSY_RETRIES or not is_df_busy(exc):
                    raise
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")


DF_BUSY_RETRIES = 8  # about 8 s in all: a df of a busy engine's layers takes seconds


def is_df_busy(exc: BackendError) -> bool:
    """The engine's answer while another disk usage query runs (dockerd: "a disk usage operation is already
    running")."""
    return exc.status == 500 and "disk usage operation is already running" in str(exc)


def parse_system_df(raw: Mapping[str, Any]) -> EngineDiskUsage:
    """The parts of a ``/system/df`` answer Thunder uses; absent or -1 (not computed) sizes count 0."""
    images = tuple(
        EngineImageUsage(
            image_id=str(image["Id"]),
            size=_size(image.get("Size")),
            shared_size=_size(image.get("SharedSize")),
            labels=image.get("Labels") or {},
        )
        for image in raw.get("Images") or ()
    )
    containers = tuple(
        EngineContainerUsage(
            container_id=str(container["Id"]),
            size_rw=_size(container.get("SizeRw")),
            size_root_fs=_size(container.get("SizeRootFs")),
            labels=container.get("Labels") or {},
        )
        for container in raw.get("Containers") or ()
    )
    return EngineDiskUsage(layers_size=_size(raw.get("LayersSize")), images=images, containers=containers)


def _size(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
