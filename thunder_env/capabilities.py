"""The backend's optional capabilities, checked once when a manager is made.

A backend declares what it can do beyond the required seam (``SandboxBackend.capabilities``). The
manager resolves that declaration here, once: a declared capability whose methods are missing is a
broken backend (refused at once); a capability not declared is replaced by a stand-in, so a call that
needs it fails with ``MissingCapabilityError`` naming the capability and what to do instead, never an
AttributeError deep in a snapshot or a disk check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .backend import (
    Capability,
    DiskAccounting,
    EngineDiskUsage,
    HostLocalAgent,
    SandboxBackend,
    SnapshotSupport,
)
from .config import ManagerConfig
from .errors import EnvError

_PROTOCOLS: dict[Capability, type] = {
    Capability.SNAPSHOTS: SnapshotSupport,
    Capability.DISK_ACCOUNTING: DiskAccounting,
    Capability.HOST_AGENT: HostLocalAgent,
}


class MissingCapabilityError(EnvError, NotImplementedError):
    """The call needs a capability the manager's backend does not declare."""

    def __init__(self, capability: Capability, backend: str, hint: str) -> None:
        self.capability = capability
        self.backend = backend
        super().__init__(f"the {backend} backend has no {capability.value} capability: {hint}")


class BackendDeclarationError(EnvError, TypeError):
    """A backend declares a capability it does not implement: a bug in the backend, refused at once."""


@dataclass(frozen=True, slots=True)
class BackendFeatures:
    """What a manager may ask of its backend beyond the required seam, resolved once.

    ``snapshots`` and ``disk`` are the backend itself, or stand-ins whose calls raise
    ``MissingCapabilityError``; ``host_agent`` is None when the backend keeps nothing on this host.
    """

    backend: str  # its name, for messages
    declared: frozenset[Capability]
    snapshots: SnapshotSupport
    disk: DiskAccounting
    host_agent: HostLocalAgent | None

    def has(self, capability: Capability) -> bool:
        return capability in self.declared

    def require(self, capability: Capability, hint: str) -> None:
        """Raise MissingCapabilityError (with ``hint``: what needs it, what to do) unless declared."""
        if capability not in self.declared:
            raise MissingCapabilityError(capability, self.backend, hint)


def resolve_features(backend: SandboxBackend, config: ManagerConfig) -> BackendFeatures:
    """Check the backend's declaration against what it implements and what ``config`` asks of it."""
    name = type(backend).__name__
    capabilities = getattr(backend, "capabilities", None)
    if not isinstance(capabilities, (set, frozenset)):
        raise BackendDeclarationError(
            f"{name} declares no capabilities: give it `capabilities = frozenset()` (or the Capability "
            "members it implements)"
        )
    declared = frozenset(capabilities)
    for capability in declared:
        if not isinstance(backend, _PROTOCOLS[capability]):
            raise BackendDeclarationError(
                f"{name} declares the {capability.value} capability but does not implement "
                f"{_PROTOCOLS[capability].__name__}"
            )
    if Capability.DISK_ACCOUNTING not in declared:
        asked = [
            field
            for field in ("sandbox_disk_limit_bytes", "disk_budget_bytes")
            if getattr(config, field) is not None
        ]
        if asked:
            # A limit nobody can measure must be refused, not silently dropped.
            raise MissingCapabilityError(
                Capability.DISK_ACCOUNTING,
                name,
                f"it cannot measure disk, so the manager cannot enforce {' and '.join(asked)}; "
                "set them to None in ManagerConfig or use a backend with disk accounting",
            )
    return BackendFeatures(
        backend=name,
        declared=declared,
        snapshots=backend if Capability.SNAPSHOTS in declared else _NoSnapshots(name),  # type: ignore[arg-type]
        disk=backend if Capability.DISK_ACCOUNTING in declared else _NoDiskAccounting(name),  # type: ignore[arg-type]
        host_agent=backend if Capability.HOST_AGENT in declared else None,  # type: ignore[arg-type]
    )


class _NoSnapshots:
    def __init__(self, backend: str) -> None:
        self._backend = backend

    def _missing(self) -> MissingCapabilityError:
        return MissingCapabilityError(
            Capability.SNAPSHOTS,
            self._backend,
            "snapshot, fork and specs with setup steps need it; run the setup steps in the sandbox "
            "instead, or use a backend with snapshots",
        )

    async def commit(self, sandbox_id: str, snapshot_ref: str, labels: Mapping[str, str], pause: bool) -> str:
        raise self._missing()

    async def remove_image(self, image_ref: str) -> bool:
        raise self._missing()


class _NoDiskAccounting:
    enforces_disk_limit: bool | None = None

    def __init__(self, backend: str) -> None:
        self._backend = backend

    async def disk_usage(self) -> EngineDiskUsage:
        raise MissingCapabilityError(
            Capability.DISK_ACCOUNTING, self._backend, "disk usage and the disk budget need it"
        )

    async def storage_path(self) -> str | None:
        return None  # its disks are not on this host: no host reserve to check


__all__ = [
    "BackendDeclarationError",
    "BackendFeatures",
    "MissingCapabilityError",
    "resolve_features",
]
