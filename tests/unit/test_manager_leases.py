"""The manager's lifecycle on the in-memory backend (no Docker): lease reference counts, foreign and
released leases, linger and reacquire, idle reaping. The Docker tier runs the same paths on real
containers; these pin the manager's own rules where a failure points at the manager alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from thunder_env import EnvManager, LeaseReleasedError, ManagerConfig, SandboxNotFoundError, SandboxSpec

from ..fakes import ManualClock, MemoryBackend

SPEC = SandboxSpec(image="fake/image:1")
OTHER = SandboxSpec(image="fake/image:2")
MakeManager = Callable[..., Awaitable[EnvManager]]


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def make_manager(backend: MemoryBackend) -> AsyncIterator[MakeManager]:
    made: list[EnvManager] = []

    async def make(clock: Callable[[], float] | None = None, **config: object) -> EnvManager:
        config.setdefault("namespace", f"unit-{len(made)}")
        config.setdefault("min_free_memory_bytes", 0)
        config.setdefault("health_interval_s", None)
        manager = EnvManager(backend, ManagerConfig(**config), **({"clock": clock} if clock else {}))  # type: ignore[arg-type]
        await manager.start()
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()
    assert not backend.live, f"sandboxes left after close: {sorted(backend.live)}"


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------ leases


async def test_a_shared_sandbox_lives_until_its_last_lease_is_released(
    make_manager: MakeManager, backend: MemoryBackend
) -> None:
    manager = await make_manager()
    first = await manager.acquire("p1", SPEC)
    second = await manager.share("p2", first.sandbox_id)
    assert manager.sandbox_info(first).lease_count == 2
    assert manager.sandbox_info(first).programs == ("p1", "p2")
    await manager.release(first)
    await manager.release(first)  # idempotent: the count drops once
    assert manager.sandbox_info(second).lease_count == 1
    assert first.sandbox_id in backend.live
    assert (await manager.exec(second, "echo still here")).stdout.text == "still here\n"
    await manager.release(second)
    assert backend.destroyed == [first.sandbox_id]
    assert manager.sandboxes() == []


async def test_a_released_lease_is_refused_with_its_reason(make_manager: MakeManager) -> None:
    manager = await make_manager()
    lease = await manager.acquire("p1", SPEC)
    await manager.release(lease)
    with pytest.raises(LeaseReleasedError, match=r"\(released\)") as caught:
        await manager.exec(lease, "true")
    assert caught.value.sandbox_id == lease.sandbox_id
    with pytest.raises(LeaseReleasedError):
        await manager.read_file(lease, "/etc/hostname")


async def test_a_lease_of_another_manager_is_refused(make_manager: MakeManager, backend: MemoryBackend) -> None:
    mine = await make_manager()
    theirs = await make_manager()
    foreign = await theirs.acquire("p1", SPEC)
    with pytest.raises(LeaseReleasedError, match="not issued by this manager"):
        await mine.exec(foreign, "true")
    assert backend.execs == []  # refused before the backend
    assert (await theirs.exec(foreign, "true")).ok  # refusing it touched nothing of the owner's
    with pytest.raises(SandboxNotFoundError):
        await mine.share("p2", foreign.sandbox_id)  # nor can another manager's sandbox be shared


async def test_ending_a_program_keeps_sandboxes_other_programs_hold(
    make_manager: MakeManager, backend: MemoryBackend
) -> None:
    manager = await make_manager()
    own = await manager.acquire("p1", SPEC)
    shared = await manager.acquire("p1", OTHER)
    kept = await manager.share("p2", shared.sandbox_id)
    assert await manager.end_program("p1") == 1
    assert own.released and shared.released and own.release_reason == "program p1 ended"
    assert set(backend.live) == {shared.sandbox_id}
    assert (await manager.exec(kept, "true")).ok


# ------------------------------------------------------------------------------------ linger


async def test_a_released_sandbox_lingers_then_goes(make_manager: MakeManager, backend: MemoryBackend) -> None:
    manager = await make_manager(linger_s=0.2)
    lease = await manager.acquire("p1", SPEC)
    await manager.release(lease)
    assert [info.state for info in manager.sandboxes()] == ["lingering"]
    assert lease.sandbox_id in backend.live
    await until(lambda: lease.sandbox_id not in backend.live, "the lingering sandbox destroyed")
    assert backend.destroyed == [lease.sandbox_id] and manager.sandboxes() == []


async def test_an_acquire_within_the_linger_time_takes_the_lingering_sandbox(
    make_manager: MakeManager, backend: MemoryBackend
) -> None:
    manager = await make_manager(linger_s=0.2)
    lease = await manager.acquire("p1", SPEC)
    await manager.release(lease)
    other = await manager.acquire("p2", OTHER)  # another spec never takes it
    assert other.sandbox_id != lease.sandbox_id
    again = await manager.acquire("p2", SPEC)
    assert again.sandbox_id == lease.sandbox_id and backend.created == 2
    await asyncio.sleep(0.4)  # past the linger time: reacquired, so it stays
    assert again.sandbox_id in backend.live
    assert (await manager.exec(again, "true")).ok


# ---------------------------------------------------------------------------------- idle reaping


async def test_an_idle_sandbox_is_reclaimed_and_its_leases_say_why(
    make_manager: MakeManager, backend: MemoryBackend
) -> None:
    clock = ManualClock()
    manager = await make_manager(clock, idle_ttl_s=10.0, reaper_interval_s=3600.0)
    idle = await manager.acquire("p1", SPEC)
    used = await manager.acquire("p2", SPEC)
    clock.now += 8
    assert (await manager.exec(used, "true")).ok  # a call counts as use
    clock.now += 5  # idle: 13 s unused; used: 5 s since its call
    assert await manager.reap_idle() == [idle.sandbox_id]
    assert idle.released and idle.release_reason == "reclaimed after 10 s idle"
    with pytest.raises(LeaseReleasedError, match="reclaimed after 10 s idle"):
        await manager.exec(idle, "true")
    assert set(backend.live) == {used.sandbox_id}
    clock.now += 11
    assert await manager.reap_idle() == [used.sandbox_id]
    assert backend.live == {}


async def test_without_an_idle_ttl_nothing_is_reaped(make_manager: MakeManager, backend: MemoryBackend) -> None:
    clock = ManualClock()
    manager = await make_manager(clock, idle_ttl_s=None)
    lease = await manager.acquire("p1", SPEC)
    clock.now += 1e6
    assert await manager.reap_idle() == []
    assert lease.sandbox_id in backend.live and not lease.released
