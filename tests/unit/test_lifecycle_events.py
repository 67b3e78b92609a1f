"""Lifecycle events on the env manager's EventBus, the registry's idle guard and the composed provisioner:
what lets the product layer subscribe instead of subclassing (issue 12 item 2). In-memory backend (the
lifecycle calls only); the real Docker paths are in tests/docker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mcp_server import ProgramRegistry, ServerConfig
from thunder_env import (
    EnvManager,
    LifecycleEvent,
    ManagerConfig,
    ProgramEnded,
    SandboxAcquired,
    SandboxReleased,
    SandboxSpec,
)
from thunder_env.capabilities import resolve_features
from thunder_env.provisioning import Provisioner
from thunder_serve.envs import EnvMemory

from ..fakes import MemoryBackend

SPEC = SandboxSpec(image="fake/image:1")
OTHER = SandboxSpec(image="fake/image:2")


def _config(**kw: object) -> ManagerConfig:
    return ManagerConfig(namespace="unit-events", min_free_memory_bytes=0, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def manager(backend: MemoryBackend) -> AsyncIterator[EnvManager]:
    envs = EnvManager(backend, _config(idle_ttl_s=60))  # type: ignore[arg-type]
    await envs.start()
    yield envs
    await envs.close()
    assert not backend.live, f"sandboxes left after close: {sorted(backend.live)}"


def _record(manager: EnvManager) -> list[LifecycleEvent]:
    heard: list[LifecycleEvent] = []

    async def listener(event: LifecycleEvent) -> None:
        heard.append(event)

    manager.events.add_lifecycle_listener(listener)
    return heard


def _summary(events: list[LifecycleEvent]) -> list[tuple[str, str, str]]:
    out = []
    for e in events:
        if isinstance(e, SandboxAcquired):
            out.append((e.kind, e.program_id, e.via))
        elif isinstance(e, SandboxReleased):
            out.append((e.kind, e.program_id, e.reason))
        elif isinstance(e, ProgramEnded):
            out.append((e.kind, e.program_id, str(e.leases_released)))
    return out


async def test_acquire_share_release_and_end_are_announced_in_order(manager: EnvManager) -> None:
    heard = _record(manager)
    lease = await manager.acquire("p", SPEC)
    shared = await manager.share("q", lease.sandbox_id)
    await manager.release(shared)
    await manager.end_program("p")
    assert _summary(heard) == [
        ("sandbox_acquired", "p", "acquire"),
        ("sandbox_acquired", "q", "share"),
        ("sandbox_released", "q", "released"),
        ("sandbox_released", "p", "program p ended"),
        ("program_ended", "p", "1"),
    ]
    acquired = heard[0]
    assert isinstance(acquired, SandboxAcquired)
    assert acquired.spec == SPEC and acquired.sandbox_id == lease.sandbox_id and acquired.lease_id == lease.lease_id
    assert manager.sandboxes() == []


async def test_a_revoked_lease_is_announced_with_the_reason_its_program_sees(backend: MemoryBackend) -> None:
    now = [0.0]
    async with EnvManager(backend, _config(idle_ttl_s=60), clock=lambda: now[0]) as manager:  # type: ignore[arg-type]
        heard = _record(manager)
        lease = await manager.acquire("p", SPEC)
        now[0] = 61.0
        assert await manager.reap_idle() == [lease.sandbox_id]
        released = heard[-1]
        assert isinstance(released, SandboxReleased) and released.lease_id == lease.lease_id
        assert released.reason == lease.release_reason == "reclaimed after 60 s idle"
    assert backend.live == {}


async def test_a_failing_listener_never_breaks_the_manager(manager: EnvManager, backend: MemoryBackend) -> None:
    async def broken(event: LifecycleEvent) -> None:
        raise RuntimeError("listener bug")

    manager.events.add_lifecycle_listener(broken)
    heard = _record(manager)  # registered after the broken one: still hears everything
    lease = await manager.acquire("p", SPEC)
    await manager.release(lease)
    assert await manager.end_program("p") == 0
    assert [e.kind for e in heard] == ["sandbox_acquired", "sandbox_released", "program_ended"]
    assert backend.live == {}


async def test_an_acquire_cancelled_while_listeners_run_releases_its_lease(
    manager: EnvManager, backend: MemoryBackend
) -> None:
    gate = asyncio.Event()

    async def slow(event: LifecycleEvent) -> None:
        if isinstance(event, SandboxAcquired):
            await gate.wait()

    manager.events.add_lifecycle_listener(slow)
    task = asyncio.create_task(manager.acquire("p", SPEC))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(backend.live) == 1
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.leases_of("p") == [] and manager.sandboxes() == [] and backend.live == {}


async def test_env_memory_learns_the_last_acquire_from_events_and_forgets_it_at_the_end(manager: EnvManager) -> None:
    memory = EnvMemory(manager)
    first = await manager.acquire("p", OTHER)
    await manager.acquire("p", SPEC)
    await manager.share("p", first.sandbox_id)  # a share is not what the program asked to be made
    last = memory.last_acquire("p")
    assert last is not None and last[0] == SPEC and memory.holds_spec("p", SPEC)
    await manager.end_program("p")
    assert memory.last_acquire("p") is None and memory.end_calls == {"p": 1}
    await manager.acquire("p", SPEC)  # an acquire racing the end does not revive the memory
    assert memory.last_acquire("p") is None
    memory.close()
    await manager.end_program("p")
    assert memory.end_calls == {"p": 1}  # closed: it no longer listens


async def test_the_idle_guard_keeps_programs_active_while_it_answers_true(manager: EnvManager) -> None:
    now = [0.0]
    tracked = {"guarded", "broken"}

    def guard(program_id: str) -> bool:
        if program_id == "broken":
            raise RuntimeError("guard bug")
        return program_id in tracked

    registry = ProgramRegistry(manager, ServerConfig(program_idle_timeout_s=10), clock=lambda: now[0], idle_guard=guard)
    for program_id in ("guarded", "free", "broken"):
        registry.state(program_id)
    now[0] = 11.0
    # A failing guard guards nothing: the program's own timeout applies.
    assert sorted(await registry.reap_idle()) == ["broken", "free"]
    tracked.discard("guarded")
    now[0] = 20.0  # last guarded at 11 s: not idle for 10 s yet
    assert await registry.reap_idle() == []
    now[0] = 21.5
    assert await registry.reap_idle() == ["guarded"]
    await registry.close()


async def test_the_provisioner_works_from_explicit_parts_without_a_manager(backend: MemoryBackend) -> None:
    removed: list[str] = []

    async def remove(sandbox_id: str) -> None:
        removed.append(sandbox_id)
        await backend.destroy(sandbox_id)

    provisioner = Provisioner(
        backend,  # type: ignore[arg-type]
        resolve_features(backend, _config()),  # type: ignore[arg-type]
        _config(),
        instance_id="i1",
        labels=lambda program, sandbox: {"thunder.program": program, "thunder.sandbox": sandbox},
        remove_container=remove,
        storage_path=lambda: None,
        sandbox_programs=dict,
    )
    await provisioner.prepare("p", SPEC)
    for _ in range(20):
        await asyncio.sleep(0)
    assert provisioner.is_prepared("p", SPEC)
    handle, origin = await provisioner.provision("p", SPEC)
    assert origin == "prepared" and backend.live[handle.sandbox_id].labels["thunder.program"] == "p"
    assert provisioner.answers_for(handle.sandbox_id)
    await provisioner.sandbox_gone(handle.sandbox_id)  # as the manager does once it removed the container
    await backend.destroy(handle.sandbox_id)
    assert not provisioner.answers_for(handle.sandbox_id)
    await provisioner.prepare("q", SPEC)
    for _ in range(20):
        await asyncio.sleep(0)
    await provisioner.end_program("q")  # an unclaimed preparation goes with its program
    assert backend.live == {} and len(removed) == 1
    await provisioner.close()


def test_no_product_class_subclasses_a_component_class() -> None:
    """The product layer composes the components (events, listeners, hooks); it never extends their classes."""
    import importlib
    import inspect
    import pkgutil

    import thunder_serve
    from thunder_sched.scheduler import Scheduler

    component = (EnvManager, ProgramRegistry, Scheduler, Provisioner)
    offenders = []
    for info in pkgutil.walk_packages(thunder_serve.__path__, "thunder_serve."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, component):
                offenders.append(f"{module.__name__}.{name}")
    assert offenders == []
