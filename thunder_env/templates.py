"""Templates: a spec's setup steps run once, snapshotted, and every later sandbox starts from the result.

A template's identity is the hash of its image and steps, plus what the steps see (env, workdir, user,
network): the same steps under another user or env can produce another filesystem. Concurrent requests
for one template wait on a single build; a failed build leaves nothing behind, raises the same typed
error to every waiter, and is retried by the next request. A build lives only while someone waits for
it: when its last waiter is cancelled, the build is cancelled and its container removed. At most
``max_concurrent`` builds run at once; the others wait their turn before creating a container.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .backend import ExecRequest, SandboxBackend
from .errors import EnvError
from .results import ExecResult
from .snapshots import TEMPLATE_HOLDER, Snapshot, SnapshotStore
from .spec import SandboxSpec

log = logging.getLogger(__name__)

STEP_OUTPUT_LIMIT = 64 << 10
# A build whose snapshot is evicted at once (a disk budget smaller than the template) is not retried forever.
MAX_BUILD_ATTEMPTS = 3


class TemplateBuildError(EnvError):
    """A setup step failed; carries the step and what it printed."""

    def __init__(self, template_key: str, step_index: int, step: str, result: ExecResult | None, detail: str) -> None:
        self.template_key = template_key
        self.step_index = step_index
        self.step = step
        self.exit_code = result.exit_code if result is not None else None
        self.stdout = result.stdout.text if result is not None else ""
        self.stderr = result.stderr.text if result is not None else ""
        output = (self.stdout + self.stderr).strip()[-4000:]
        super().__init__(
            f"template {template_key}: setup step {step_index + 1} ({step!r}) {detail}"
            + (f"; its output:\n{output}" if output else "; it printed nothing")
            + "\nfix the step and acquire again: nothing of the failed build was kept"
        )


@dataclass(eq=False, slots=True)
class _Build:
    task: asyncio.Task[Snapshot]
    waiters: int = 0


def template_key(spec: SandboxSpec) -> str:
    identity = {
        "image": spec.image,
        "setup": list(spec.setup),
        "env": spec.env,
        "workdir": spec.workdir,
        "user": spec.user,
        "network": spec.network,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class TemplateBuilder:
    def __init__(
        self,
        backend: SandboxBackend,
        store: SnapshotStore,
        labels: Callable[[str, str], Mapping[str, str]],
        *,
        step_timeout_s: float,
        pause: bool,
        max_concurrent: int = 2,
        before_build: Callable[[], None] = lambda: None,
        on_built: Callable[[Snapshot], None] = lambda snapshot: None,
    ) -> None:
        self._backend = backend
        self._store = store
        self._labels = labels
        self._step_timeout_s = step_timeout_s
        self._pause = pause
        self._on_built = on_built
        self._before_build = before_build  # raises to refuse a build (a disk reserve)
        self._ready: dict[str, str] = {}  # template key -> snapshot id
        self._building: dict[str, _Build] = {}
        self._slots = asyncio.Semaphore(max_concurrent)
        self.builds = 0  # builds started (a test and an operator both want this)
        self.build_ids: set[str] = set()  # sandbox ids of build containers in flight (never judged orphaned)

    async def ensure(self, spec: SandboxSpec) -> Snapshot:
        """The template's live snapshot, built now if needed. The caller must hold it before awaiting."""
        key = template_key(spec)
        for _ in range(MAX_BUILD_ATTEMPTS):
            snapshot_id = self._ready.get(key)
            snapshot = self._store.find(snapshot_id) if snapshot_id else None
            if snapshot is not None:
                return snapshot
            build = self._building.get(key)
            if build is None:
                task = asyncio.create_task(self._build(key, spec), name=f"thunder-template-{key}")
                build = self._building[key] = _Build(task)
                task.add_done_callback(lambda t, k=key: self._build_done(k, t))
            snapshot = await self._wait(key, build)
            if self._store.find(snapshot.snapshot_id) is not None:
                return snapshot
        raise EnvError(
            f"template {key} was evicted as soon as it was built {MAX_BUILD_ATTEMPTS} times: "
            "raise disk_budget_bytes above the template's size"
        )

    def snapshot_id(self, spec: SandboxSpec) -> str | None:
        return self._ready.get(template_key(spec))

    async def _wait(self, key: str, build: _Build) -> Snapshot:
        """Wait for a shared build; the last waiter to give up cancels it and waits for its cleanup."""
        build.waiters += 1
        try:
            # Shielded: one waiter giving up must not cancel the build the others wait for.
            return await asyncio.shield(build.task)
        finally:
            build.waiters -= 1
            if build.waiters == 0 and not build.task.done():
                if self._building.get(key) is build:
                    del self._building[key]  # a later request starts a fresh build, not this dying one
                build.task.cancel()
                log.info("template %s: build cancelled, nobody waits for it any more", key)
                await asyncio.shield(asyncio.gather(build.task, return_exceptions=True))

    async def close(self) -> None:
        tasks = [build.task for build in self._building.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _build_done(self, key: str, task: asyncio.Task[Snapshot]) -> None:
        build = self._building.get(key)
        if build is not None and build.task is task:
            del self._building[key]
        if not task.cancelled() and task.exception() is None:
            self._ready[key] = task.result().snapshot_id
            self._on_built(task.result())

    async def _build(self, key: str, spec: SandboxSpec) -> Snapshot:
        async with self._slots:  # bounded: a burst of new templates must not start a burst of containers
            return await self._build_now(key, spec)

    async def _build_now(self, key: str, spec: SandboxSpec) -> Snapshot:
        self._before_build()
        self.builds += 1
        build_id = "tb-" + secrets.token_hex(6)
        build_spec = spec.model_copy(update={"setup": (), "ports": ()})
        log.info("template %s: building in %s (%d steps)", key, build_id, len(spec.setup))
        self.build_ids.add(build_id)
        try:
            await self._backend.create(build_id, build_spec, self._labels("template", build_id))
            for index, step in enumerate(spec.setup):
                await self._run_step(key, build_id, spec, index, step)
            return await self._store.commit(
                build_id,
                kind="template",
                program_id="",
                source_spec=spec,
                holder=TEMPLATE_HOLDER + key,
                parent_snapshot_id=None,
                pause=self._pause,
            )
        finally:
            # By name, so even a create cancelled before it answered leaves no container behind.
            try:
                await asyncio.shield(self._backend.destroy(build_id))
            finally:
                self.build_ids.discard(build_id)  # a container left behind is the health check's

    async def _run_step(self, key: str, build_id: str, spec: SandboxSpec, index: int, step: str) -> None:
        request = ExecRequest(
            argv=["/bin/sh", "-c", step],
            marker=secrets.token_hex(8),
            workdir=spec.workdir,
            user=spec.user,
            timeout_s=self._step_timeout_s,
            output_limit=STEP_OUTPUT_LIMIT,
        )
        result = await self._backend.exec(build_id, request)
        if result.timed_out:
            raise TemplateBuildError(key, index, step, result, f"timed out after {self._step_timeout_s:g} s")
        if result.exit_code != 0:
            raise TemplateBuildError(key, index, step, result, f"failed with exit code {result.exit_code}")
