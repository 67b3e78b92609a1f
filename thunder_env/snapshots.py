"""Snapshots: image layers held by references, and the collection that removes them.

A snapshot is held by *holders*, named by kind: ``sandbox:<id>`` (a sandbox started from it: the engine
cannot remove an image a container runs on), ``program:<id>`` (the program that took it, or one that
called hold_snapshot), and ``template:<key>`` (a template's build cache). It is removed the moment its
last holder goes. A snapshot held only by its template is a cache entry: kept while the disk budget
allows, evicted oldest first when it does not (the template is rebuilt on its next use).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .backend import SnapshotSupport
from .errors import BackendError, EnvError, ResourceExhaustedError
from .results import SnapshotInfo
from .spec import SandboxSpec

log = logging.getLogger(__name__)

SNAPSHOT_REPOSITORY = "thunder/snapshot"
TEMPLATE_HOLDER = "template:"
SnapshotKind = Literal["snapshot", "template"]
LabelFactory = Callable[[str, str], Mapping[str, str]]  # (program, sandbox) -> the manager's labels


class SnapshotNotFoundError(EnvError, LookupError):
    def __init__(self, snapshot_id: str) -> None:
        self.snapshot_id = snapshot_id
        super().__init__(
            f"unknown snapshot {snapshot_id!r}: it was never taken here or its last holder released it; "
            "list snapshots to see the live ones, and hold a snapshot to keep it"
        )


class DiskBudgetExceededError(ResourceExhaustedError):
    def __init__(self, used_bytes: int, budget_bytes: int) -> None:
        self.used_bytes = used_bytes
        self.budget_bytes = budget_bytes
        super().__init__(
            f"this manager's sandboxes and snapshots use {used_bytes >> 20} MiB, over the disk budget of "
            f"{budget_bytes >> 20} MiB, and every snapshot is in use; release snapshots or end programs first"
        )


@dataclass(eq=False, slots=True)
class Snapshot:
    snapshot_id: str
    image_id: str
    image_ref: str  # repo:tag; removing the tag lets the engine prune the layers once nothing uses them
    kind: SnapshotKind
    program_id: str
    source_sandbox_id: str
    parent_snapshot_id: str | None
    created_at: float
    launch_spec: SandboxSpec  # the spec sandboxes of this snapshot start from (image = the snapshot)
    holders: set[str] = field(default_factory=set)
    removing: bool = False

    @property
    def in_use(self) -> bool:
        return any(not holder.startswith(TEMPLATE_HOLDER) for holder in self.holders)

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(
            snapshot_id=self.snapshot_id,
            image_id=self.image_id,
            kind=self.kind,
            program_id=self.program_id,
            source_sandbox_id=self.source_sandbox_id,
            parent_snapshot_id=self.parent_snapshot_id,
            created_at=self.created_at,
            holders=tuple(sorted(self.holders)),
        )


@dataclass(frozen=True, slots=True)
class GcCandidate:
    snapshot_id: str
    created_at: float
    in_use: bool  # held by a sandbox, a program or a pool: never removed
    held: bool  # any holder at all (a template cache counts)
    unique_bytes: int


@dataclass(frozen=True, slots=True)
class GcPlan:
    remove: tuple[str, ...]
    used_after: int
    over_budget: bool  # still over the budget after removing everything removable


def plan_gc(candidates: Iterable[GcCandidate], used_bytes: int, budget_bytes: int | None) -> GcPlan:
    """Which snapshots to remove: every unheld one; then, while over budget, the cached ones oldest first."""
    remove: list[str] = []
    used = used_bytes
    cached: list[GcCandidate] = []
    for candidate in candidates:
        if not candidate.held:
            remove.append(candidate.snapshot_id)
            used -= candidate.unique_bytes
        elif not candidate.in_use:
            cached.append(candidate)
    if budget_bytes is not None:
        for candidate in sorted(cached, key=lambda c: (c.created_at, c.snapshot_id)):
            if used <= budget_bytes:
                break
            remove.append(candidate.snapshot_id)
            used -= candidate.unique_bytes
    return GcPlan(tuple(remove), used, budget_bytes is not None and used > budget_bytes)


class SnapshotStore:
    """The snapshots one manager took, their holders, and their removal through the backend."""

    def __init__(self, backend: SnapshotSupport, labels: LabelFactory, clock: Callable[[], float]) -> None:
        self._backend = backend
        self._labels = labels
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        # Images of failed or cancelled commits whose removal failed too (ref, id if known): retried.
        self._orphans: set[tuple[str, str | None]] = set()

    async def commit(
        self,
        sandbox_id: str,
        *,
        kind: SnapshotKind,
        program_id: str,
        source_spec: SandboxSpec,
        holder: str,
        parent_snapshot_id: str | None,
        pause: bool,
    ) -> Snapshot:
        """Capture a sandbox as a new snapshot, held by ``holder`` from the start."""
        snapshot_id = "snap-" + secrets.token_hex(6)
        image_ref = f"{SNAPSHOT_REPOSITORY}:{snapshot_id}"
        labels = dict(self._labels(program_id or kind, sandbox_id))
        labels["thunder.snapshot"] = snapshot_id
        labels["thunder.snapshot-kind"] = kind
        # Shielded: the engine finishes a commit whose request was cut off, so an image removed at once
        # (before it exists) would appear later and stay. A cancelled caller waits for the commit's answer,
        # then removes its image.
        committing = asyncio.ensure_future(self._backend.commit(sandbox_id, image_ref, labels, pause))
        try:
            image_id = await asyncio.shield(committing)
        except BaseException:
            await asyncio.shield(self._remove_after(committing, image_ref))
            raise
        snapshot = Snapshot(
            snapshot_id=snapshot_id,
            image_id=image_id,
            image_ref=image_ref,
            kind=kind,
            program_id=program_id,
            source_sandbox_id=sandbox_id,
            parent_snapshot_id=parent_snapshot_id,
            created_at=self._clock(),
            launch_spec=source_spec.model_copy(update={"image": image_id, "setup": ()}),
            holders={holder},
        )
        self._snapshots[snapshot_id] = snapshot
        return snapshot

    def get(self, snapshot_id: str) -> Snapshot:
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None or snapshot.removing:
            raise SnapshotNotFoundError(snapshot_id)
        return snapshot

    def find(self, snapshot_id: str) -> Snapshot | None:
        snapshot = self._snapshots.get(snapshot_id)
        return None if snapshot is None or snapshot.removing else snapshot

    def hold(self, snapshot_id: str, holder: str) -> Snapshot:
        """Add a holder. Synchronous on purpose: no collection can run between a lookup and its hold."""
        snapshot = self.get(snapshot_id)
        snapshot.holders.add(holder)
        return snapshot

    def held_by(self, holder: str) -> list[Snapshot]:
        return [s for s in self._snapshots.values() if holder in s.holders]

    async def release(self, snapshot_id: str, holder: str) -> bool:
        """Drop one holder; the snapshot goes with its last. Returns whether the holder held it."""
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None or holder not in snapshot.holders:
            return False
        snapshot.holders.discard(holder)
        if not snapshot.holders:
            await self.remove(snapshot)
        return True

    async def drop_holder(self, holder: str) -> None:
        """Drop ``holder`` everywhere (a sandbox destroyed, a program ended)."""
        for snapshot in self.held_by(holder):
            await self.release(snapshot.snapshot_id, holder)

    def snapshots(self) -> list[Snapshot]:
        return sorted((s for s in self._snapshots.values() if not s.removing), key=lambda s: s.created_at)

    def candidates(self, unique_bytes: Mapping[str, int]) -> list[GcCandidate]:
        return [
            GcCandidate(s.snapshot_id, s.created_at, s.in_use, bool(s.holders), unique_bytes.get(s.snapshot_id, 0))
            for s in self._snapshots.values()
            if not s.removing
        ]

    async def remove(self, snapshot: Snapshot) -> bool:
        """Remove the image now. A failure is logged and the record kept, so a later pass retries."""
        if snapshot.removing:
            return False
        snapshot.removing = True
        try:
            if not await self._backend.remove_image(snapshot.image_ref):
                # The tag went behind our back: the image may still be there under its id.
                await self._backend.remove_image(snapshot.image_id)
        except BackendError as exc:
            snapshot.removing = False
            log.warning(
                "cannot remove snapshot %s yet (%s); retrying on the next collection", snapshot.snapshot_id, exc
            )
            return False
        self._snapshots.pop(snapshot.snapshot_id, None)
        return True

    async def remove_ids(self, snapshot_ids: Sequence[str]) -> None:
        for snapshot_id in snapshot_ids:
            snapshot = self._snapshots.get(snapshot_id)
            # Re-checked here: a hold may have arrived since the plan was made.
            if snapshot is not None and not snapshot.in_use:
                await self.remove(snapshot)

    async def close(self) -> None:
        """Remove every snapshot, newest first (a child's image before its parent's)."""
        for snapshot in sorted(self._snapshots.values(), key=lambda s: s.created_at, reverse=True):
            snapshot.holders.clear()
            snapshot.removing = False
            await self.remove(snapshot)
        await self.retry_orphans()

    async def retry_orphans(self) -> None:
        """Remove again the images of failed commits whose first removal failed (kept while it fails)."""
        for orphan in sorted(self._orphans, key=str):
            try:
                await self._remove_image(*orphan)
            except BackendError as exc:
                log.warning("cannot remove the image of a failed snapshot %s yet: %s", orphan[0], exc)
                continue
            self._orphans.discard(orphan)

    async def _remove_image(self, image_ref: str, image_id: str | None) -> None:
        if not await self._backend.remove_image(image_ref) and image_id is not None:
            await self._backend.remove_image(image_id)

    async def _remove_after(self, committing: asyncio.Future[str], image_ref: str) -> None:
        """Remove what a failed or cancelled commit may have produced, once the commit has answered."""
        await asyncio.gather(committing, return_exceptions=True)
        image_id = committing.result() if not committing.cancelled() and committing.exception() is None else None
        try:
            await self._remove_image(image_ref, image_id)
        except BackendError as exc:
            self._orphans.add((image_ref, image_id))  # never forgotten: retried (health check, close)
            log.warning("cannot remove the image of a cancelled snapshot %s yet: %s", image_ref, exc)
