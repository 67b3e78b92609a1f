"""Races and cancellations that must leak nothing (issue 11, item 12), on the real engine.

Faults are injected deterministically: ``GatedBackend`` wraps the real backend and holds one method at a
gate; the engine's side of the call (the real request) runs on even if its caller is cancelled, as
dockerd finishes a request whose client went away.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from thunder_env import EnvManager, ManagerClosedError, ManagerConfig, SandboxSpec, ToolEvent
from thunder_env.docker import DockerBackend

from ._helpers import eventually, image_exists, with_setup
from .conftest import BASE_IMAGE, ManagerFactory, leftovers


class GatedBackend:
    """The real backend; calls of ``method`` wait for ``gate`` (``entered`` tells one arrived)."""

    def __init__(self, inner: DockerBackend, method: str) -> None:
        self._inner = inner
        self._method = method
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.engine_calls: list[asyncio.Future[Any]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        return self._gated(attr) if name == self._method else attr

    def _gated(self, real: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            async def engine_side() -> Any:
                await self.gate.wait()
                return await real(*args, **kwargs)

            engine = asyncio.ensure_future(engine_side())
            self.engine_calls.append(engine)
            self.entered.set()
            return await asyncio.shield(engine)

        return call


@pytest.fixture
async def gated_manager(backend: DockerBackend) -> AsyncIterator[Callable[[str], Any]]:
    """Managers on a gated backend, in namespaces of their own; whatever they leave is removed, then
    reported as a failure by the test itself."""
    made: list[tuple[EnvManager, GatedBackend]] = []

    async def factory(method: str) -> tuple[EnvManager, GatedBackend]:
        gated = GatedBackend(backend, method)
        manager = EnvManager(gated, ManagerConfig(namespace="test-" + secrets.token_hex(4)))  # type: ignore[arg-type]
        await manager.start()
        made.append((manager, gated))
        return manager, gated

    yield factory
    for manager, gated in made:
        gated.gate.set()
        await asyncio.gather(*gated.engine_calls, return_exceptions=True)
        await manager.close()
        namespace = manager.config.namespace
        for resource in await backend.list_managed({"thunder.namespace": namespace}):
            await backend.remove_managed(resource)
        await backend.remove_orphan_dirs(namespace, ())


async def test_acquire_racing_close_is_refused_and_destroyed(
    gated_manager: Any, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager, gated = await gated_manager("create")
    acquiring = asyncio.create_task(manager.acquire("p", base_spec))
    await gated.entered.wait()  # the container is being created
    closing = asyncio.create_task(manager.close())
    await asyncio.sleep(0)  # close() has begun
    gated.gate.set()
    await closing
    with pytest.raises(ManagerClosedError, match="shutting down"):
        await acquiring
    # close() returned only once the racing acquire had destroyed its container.
    assert await leftovers(backend, manager.config.namespace) == []
    with pytest.raises(ManagerClosedError):
        await manager.acquire("p", base_spec)


async def test_cancel_during_tool_start_leaves_the_sandbox_reapable(
    make_manager: ManagerFactory, base_spec: SandboxSpec
) -> None:
    manager = await make_manager(idle_ttl_s=0.05, reaper_interval_s=3600)
    lease = await manager.acquire("p", base_spec)
    delivering = asyncio.Event()
    events: list[str] = []

    async def slow_listener(event: ToolEvent) -> None:
        events.append(event.kind)
        if event.kind == "tool_start":
            delivering.set()
            await asyncio.Event().wait()  # a listener that hangs: the call is cancelled meanwhile

    manager.add_listener(slow_listener)
    call = asyncio.create_task(manager.exec(lease, "true"))
    await delivering.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert events == ["tool_start", "tool_end"]  # its end is told too
    await asyncio.sleep(0.1)  # past the idle TTL
    assert await manager.reap_idle() == [lease.sandbox_id]  # not left marked busy forever


async def test_concurrent_exposes_of_one_port_share_one_forwarder(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-ports", SandboxSpec(image=BASE_IMAGE, network="internal"))
    bindings = await asyncio.gather(*(manager.expose_port(lease, 8080) for _ in range(5)))
    assert len(set(bindings)) == 1
    assert manager.sandbox_info(lease).ports == (bindings[0],)
    await manager.release(lease)
    with pytest.raises(OSError):  # and its listening socket went with the sandbox
        await asyncio.open_connection(bindings[0].host, bindings[0].host_port)


async def test_cancelled_commit_leaves_no_image(
    gated_manager: Any, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager, gated = await gated_manager("commit")
    lease = await manager.acquire("p", base_spec)
    snapshotting = asyncio.create_task(manager.snapshot(lease))
    await gated.entered.wait()
    snapshotting.cancel()  # the caller gives up; the engine still commits
    await asyncio.sleep(0)
    gated.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await snapshotting
    (engine,) = gated.engine_calls
    image_id = await engine  # the engine did produce the image...
    assert not await image_exists(backend, image_id)  # ...and the cancelled snapshot removed it
    assert manager.provisioner.snapshots() == []


async def test_acquire_waiting_on_a_build_gets_a_typed_error_when_closed(
    make_manager: ManagerFactory, base_spec: SandboxSpec
) -> None:
    manager = await make_manager()
    acquiring = asyncio.create_task(manager.acquire("p", with_setup(base_spec, "sleep 120")))

    async def building() -> bool:
        return manager.provisioner.template_builds() == 1

    await eventually(building, what="the template build started")
    await manager.close()  # cancels the build the acquire waits on
    with pytest.raises(ManagerClosedError):  # not a CancelledError: the caller was not cancelled
        await acquiring
