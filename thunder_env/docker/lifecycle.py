"""Creating, finding and removing sandboxes as Docker containers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiodocker

from ..backend import BackendSandbox, ManagedResource
from ..backend_config import DOCKER_LOG_MAX_BYTES as DEFAULT_LOG_MAX_BYTES
from ..errors import BackendError, ImageNotFoundError, InvalidSpecError
from ..spec import SandboxSpec
from .agent_support import ExecAgents
from .clients import DockerClients
from .errors import engine_errors
from .networks import ProgramNetworks

log = logging.getLogger(__name__)

CONTAINER_PREFIX = "thunder-"
# A removal already under way (another caller's) is waited for this long before the caller retries.
REMOVAL_POLLS = 50
REMOVAL_POLL_S = 0.2


def container_name(sandbox_id: str) -> str:
    return CONTAINER_PREFIX + sandbox_id


def container_config(
    spec: SandboxSpec, labels: Mapping[str, str], *, log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
) -> dict[str, Any]:
    """The Engine API create body for a spec: hardened by default."""
    # 'internal': the sandbox's program network, set by DockerLifecycle.create (see networks.py).
    network_mode = {"none": "none", "internal": "none", "bridge": "bridge"}[spec.network]
    return {
        "Image": spec.image,
        "Cmd": list(spec.command),
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "WorkingDir": spec.workdir,
        "User": spec.user,
        "Labels": dict(labels),
        "AttachStdout": False,
        "AttachStderr": False,
        "HostConfig": {
            "NanoCpus": int(spec.cpus * 1e9),
            "Memory": spec.memory_bytes,
            "MemorySwap": spec.memory_bytes,  # no swap: an OOM must be an OOM, not a crawl
            "PidsLimit": spec.pids_limit,
            "CapDrop": ["ALL"],
            "CapAdd": list(spec.capabilities),
            "SecurityOpt": ["no-new-privileges"],
            "NetworkMode": network_mode,
            "Init": True,  # reaps zombies left by agents' commands
            # One bounded log file: writes to /proc/1/fd/1 must not fill the engine's data root.
            "LogConfig": {"Type": "json-file", "Config": {"max-size": str(log_max_bytes), "max-file": "1"}},
        },
    }


class DockerLifecycle:
    """Containers: create (with the sandbox's network and agent), destroy, find and remove by labels."""

    def __init__(
        self, clients: DockerClients, networks: ProgramNetworks, agents: ExecAgents, log_max_bytes: int
    ) -> None:
        self._docker = clients.control
        self._networks = networks
        self._agents = agents
        self._log_max_bytes = log_max_bytes
        # Whether the storage driver limits a writable layer (StorageOpt size): None until a create tells.
        self.enforces_disk_limit: bool | None = None

    async def create(self, sandbox_id: str, spec: SandboxSpec, labels: Mapping[str, str]) -> BackendSandbox:
        config = container_config(spec, labels, log_max_bytes=self._log_max_bytes)
        if spec.disk_bytes is not None and self.enforces_disk_limit is not False:
            config["HostConfig"]["StorageOpt"] = {"size": str(spec.disk_bytes)}
        try:
            if spec.network == "internal":
                config["HostConfig"]["NetworkMode"] = await self._networks.attach(sandbox_id, labels)
            agent = await self._agents.prepare(sandbox_id, spec, labels, config)
        except BaseException:
            await asyncio.shield(self._networks.detach(sandbox_id))
            raise
        name = container_name(sandbox_id)
        try:
            container = await self._create_container(config, name)
        except BaseException as exc:
            await asyncio.shield(self._agents.forget(sandbox_id))
            await asyncio.shield(self._networks.detach(sandbox_id))
            if isinstance(exc, BackendError) and exc.status == 404:
                raise ImageNotFoundError(spec.image) from exc
            if isinstance(exc, BackendError) and exc.status == 400:
                raise InvalidSpecError(f"the engine rejected the sandbox spec: {exc}") from exc
            raise
        try:
            async with engine_errors(sandbox_id):
                await container.start()
                info = await container.show()
        except BaseException:
            await asyncio.shield(self.destroy(sandbox_id))
            raise
        self._agents.register(agent)
        return BackendSandbox(sandbox_id=sandbox_id, backend_id=container.id, address=_address(info))

    async def _create_container(self, config: dict[str, Any], name: str) -> aiodocker.containers.DockerContainer:
        limited = "StorageOpt" in config["HostConfig"]
        try:
            async with engine_errors():
                container = await self._docker.containers.create(config, name=name)
        except BackendError as exc:
            if not limited or "storage-opt" not in str(exc).lower():
                raise
            # Detected once: from now on the manager measures writable layers instead.
            if self.enforces_disk_limit is not False:
                log.info("the storage driver cannot limit a sandbox's disk (%s); the manager measures it", exc)
            self.enforces_disk_limit = False
            del config["HostConfig"]["StorageOpt"]
            async with engine_errors():
                return await self._docker.containers.create(config, name=name)
        if limited:
            self.enforces_disk_limit = True
        return container

    async def destroy(self, sandbox_id: str) -> None:
        self._agents.detach(sandbox_id)
        try:
            await self._delete_container(container_name(sandbox_id))
        finally:
            # Even when the caller gives up half-way (a cancelled reaper): the host directory goes too.
            await asyncio.shield(self._agents.forget(sandbox_id))
        await asyncio.shield(self._networks.detach(sandbox_id))  # the container is gone: its network may go

    async def _delete_container(self, ref: str) -> None:
        """Force-remove a container (name or id). Missing: it is gone. A removal already under way (another
        caller's, or a dead manager's) is not done yet, and dockerd drops it if its caller hung up: only a
        container seen gone counts as removed (otherwise the caller retries)."""
        try:
            async with engine_errors():
                await self._docker.containers.container(ref).delete(force=True, v=True)
        except BackendError as exc:
            if exc.status == 409 and "already in progress" in str(exc):
                await self._until_gone(ref)
            elif exc.status != 404:
                raise

    async def _until_gone(self, ref: str) -> None:
        container = self._docker.containers.container(ref)
        for _ in range(REMOVAL_POLLS):
            try:
                async with engine_errors():
                    await container.show()
            except BackendError as exc:
                if exc.status == 404:
                    return
                raise
            await asyncio.sleep(REMOVAL_POLL_S)
        raise BackendError(f"the removal of container {ref} already under way did not finish; retry it")

    async def is_running(self, sandbox_id: str) -> bool:
        try:
            async with engine_errors():
                info = await self._docker.containers.container(container_name(sandbox_id)).show()
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        return bool(info["State"]["Running"])

    async def list_managed(self, labels: Mapping[str, str]) -> list[ManagedResource]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        async with engine_errors():
            containers = await self._docker.containers.list(all=True, filters=filters)
            images = await self._docker.images.list(filters=filters)
        found = [
            ManagedResource("container", c.id, c._container.get("Labels") or {}, c._container.get("State"))
            for c in containers
        ]
        found += [ManagedResource("image", i["Id"], i.get("Labels") or {}) for i in images]
        networks = await self._networks.list_managed(filters)
        found += [ManagedResource("network", n["Id"], n.get("Labels") or {}) for n in networks]
        return found

    async def remove_managed(self, resource: ManagedResource) -> None:
        if resource.kind == "container":
            await self._delete_container(resource.resource_id)
            return
        try:
            async with engine_errors():
                if resource.kind == "image":
                    await self._docker.images.delete(resource.resource_id, force=True)
                elif resource.kind == "network":
                    await self._networks.remove(resource.resource_id)
        except BackendError as exc:
            if exc.status != 404:
                raise

    async def retry_removals(self) -> list[str]:
        return await self._networks.retry_removals()

    async def storage_path(self) -> str | None:
        async with engine_errors():
            info = await self._docker.system.info()
        return info.get("DockerRootDir")


def _address(info: Mapping[str, Any]) -> str | None:
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    for network in networks.values():  # one at most: its program's network, or the bridge
        address = (network or {}).get("IPAddress")
        if address:
            return str(address)
    return None
