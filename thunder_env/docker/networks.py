"""Networks of ``network='internal'`` sandboxes: one per program, so a program's sandboxes reach each
other and the host reaches them all (port forwarders), but no sandbox reaches another program's.

A program's network is created with its first internal sandbox and removed with its last one (counted
here, by sandbox). It carries the manager's labels (namespace, instance, owner, program), so reconcile
removes the networks of dead managers like their containers. Sandboxes that belong to no program yet
(warm pool sandboxes, template builds) join one shared network with inter-container traffic off: they
reach no other sandbox at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from aiodocker.networks import DockerNetwork

from ..errors import BackendError, ResourceExhaustedError
from .clients import DockerClients
from .errors import engine_errors

log = logging.getLogger(__name__)

NETWORK_PREFIX = "thunder-net-"
ISOLATED_NETWORK = "thunder-isolated"
# thunder.program labels of sandboxes started before any program owns them (see provisioning.py).
UNASSIGNED_PROGRAMS = frozenset({"pool", "template"})
_NETWORK_LABELS = ("thunder.managed", "thunder.namespace", "thunder.instance", "thunder.owner", "thunder.program")


def program_network_name(labels: Mapping[str, str]) -> str:
    """The network of a sandbox's program under one manager instance (names allow only [\\w.-])."""
    key = "\0".join(labels.get(k, "") for k in ("thunder.namespace", "thunder.instance", "thunder.program"))
    return NETWORK_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:24]


class ProgramNetworks:
    def __init__(self, clients: DockerClients) -> None:
        self._docker = clients.control
        self._lock = asyncio.Lock()  # creations and removals: a network never goes under a new sandbox
        self._users: dict[str, set[str]] = {}  # network name -> sandboxes on it
        self._network_of: dict[str, str] = {}  # sandbox id -> network name
        self._unremoved: set[str] = set()  # networks nobody uses whose removal failed: retried

    async def attach(self, sandbox_id: str, labels: Mapping[str, str]) -> str:
        """The network a new internal sandbox joins, created if needed; ``detach`` it once it is gone."""
        program = labels.get("thunder.program", "")
        if not program or program in UNASSIGNED_PROGRAMS:
            await self._ensure_isolated()
            return ISOLATED_NETWORK
        name = program_network_name(labels)
        async with self._lock:
            if name not in self._users:
                await self._create(
                    name, {**{k: labels[k] for k in _NETWORK_LABELS if k in labels}, "thunder.network": "program"}
                )
                self._users[name] = set()
            self._users[name].add(sandbox_id)
            self._unremoved.discard(name)  # in use again
            self._network_of[sandbox_id] = name
        return name

    async def detach(self, sandbox_id: str) -> None:
        """The sandbox is gone: its program's network goes with the last one on it."""
        name = self._network_of.pop(sandbox_id, None)
        if name is None:
            return
        async with self._lock:
            users = self._users.get(name, set())
            users.discard(sandbox_id)
            if users:
                return
            self._users.pop(name, None)
            try:
                await self.remove(name)
            except BackendError as exc:  # retried by retry_removals; a new sandbox of the program reuses it
                self._unremoved.add(name)
                log.warning("cannot remove network %s yet: %s", name, exc)

    async def retry_removals(self) -> list[str]:
        """Remove again the networks whose removal failed and that no sandbox joined since; returns
        the ones still left (an engine that keeps refusing)."""
        async with self._lock:
            for name in sorted(self._unremoved):
                if name not in self._users:
                    try:
                        await self.remove(name)
                    except BackendError as exc:
                        log.warning("cannot remove network %s yet: %s", name, exc)
                        continue
                self._unremoved.discard(name)
            return sorted(self._unremoved)

    async def list_managed(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        async with engine_errors():
            return await self._docker.networks.list(filters=filters)

    async def remove(self, network: str) -> None:
        try:
            async with engine_errors():
                await DockerNetwork(self._docker, network).delete()
        except BackendError as exc:
            if exc.status != 404:
                raise

    async def _create(self, name: str, labels: Mapping[str, str], options: Mapping[str, str] | None = None) -> None:
        body: dict[str, Any] = {"Name": name, "Internal": True, "Labels": dict(labels)}
        if options:
            body["Options"] = dict(options)
        try:
            async with engine_errors():
                await self._docker.networks.create(body)
        except BackendError as exc:
            if "address pool" in str(exc):
                raise ResourceExhaustedError(
                    f"no subnet left for another sandbox network ({exc}); end programs that use network="
                    "'internal', or widen default-address-pools in the engine's daemon.json"
                ) from exc
            if exc.status != 409:  # 409: it exists (a removal that failed earlier, a racing server): use it
                raise

    async def _ensure_isolated(self) -> None:
        async with self._lock:
            try:
                async with engine_errors():
                    await self._docker.networks.get(ISOLATED_NETWORK)
                return
            except BackendError as exc:
                if exc.status != 404:
                    raise
            await self._create(
                ISOLATED_NETWORK,
                {"thunder.managed": "1", "thunder.network": "isolated"},
                {"com.docker.network.bridge.enable_icc": "false"},  # no traffic between its sandboxes
            )
