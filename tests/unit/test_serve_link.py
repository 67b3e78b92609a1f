"""The combined layer's coupling, without Docker or vLLM: a program's end on either side ends the other exactly
once, a restore prepares the program's last environment, and the scheduler calls the restore hook only on
restores (never on first admissions). The env manager runs on the in-memory backend of tests/fakes.py;
real Docker and the real CPU vLLM are in tests/vllm/test_serve_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from mcp_server import ProgramRegistry, ServerConfig
from mcp_server.errors import ProgramRetiredError
from thunder_env import EnvManager, ManagerConfig, SandboxReleased, SandboxSpec
from thunder_env.events import ToolEvent
from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.policy import Status
from thunder_sched.program import Usage
from thunder_sched.scheduler import Scheduler
from thunder_serve.link import ProgramLink

from ..fakes import MemoryBackend

SPEC = SandboxSpec(image="fake/image:1")
OTHER = SandboxSpec(image="fake/image:2")
BACKEND = "http://fake-vllm"


@dataclass
class Rig:
    backend: MemoryBackend
    manager: EnvManager
    scheduler: Scheduler
    registry: ProgramRegistry
    link: ProgramLink

    async def settle(self) -> None:
        """Let the scheduler's end notifications and the link's preparations run."""
        for _ in range(20):
            await asyncio.sleep(0)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    backend = MemoryBackend()
    manager = EnvManager(backend, ManagerConfig(namespace="unit", min_free_memory_bytes=0))  # type: ignore[arg-type]
    await manager.start()

    async def on_end(program_id: str) -> None:
        await link.on_scheduler_end(program_id)

    scheduler = Scheduler(SchedulerConfig(backends=(BACKEND,)), on_program_end=on_end)
    link = ProgramLink(scheduler, manager)
    registry = ProgramRegistry(manager, ServerConfig(), idle_guard=link.live_in_scheduler)
    link.attach(registry)
    manager.add_listener(scheduler.on_tool_event)
    yield Rig(backend, manager, scheduler, registry, link)
    await registry.close()
    await link.close()
    await scheduler.close()
    await manager.close()
    assert not backend.live, f"sandboxes left after close: {sorted(backend.live)}"


async def _with_sandbox(rig: Rig, program_id: str) -> str:
    """A program known to both sides: MCP state with a leased sandbox, and a tool event for the scheduler."""
    state = rig.registry.state(program_id)
    lease = await rig.manager.acquire(program_id, SPEC)
    state.leases[lease.sandbox_id] = lease
    await rig.scheduler.on_tool_event(ToolEvent("tool_end", program_id, lease.sandbox_id, "sandbox_exec", "c1", 0.0))
    return lease.sandbox_id


async def test_scheduler_release_ends_the_environment_side_exactly_once(rig: Rig) -> None:
    sandbox = await _with_sandbox(rig, "p1")
    assert rig.scheduler.program("p1").status is Status.PAUSED  # known to the scheduler
    rig.scheduler.release("p1")
    await rig.settle()
    assert rig.link.envs.end_calls == {"p1": 1}
    assert sandbox not in rig.backend.live
    assert rig.registry.get("p1") is None and rig.manager.programs() == []
    with pytest.raises(ProgramRetiredError, match="released"):
        rig.registry.state("p1")  # a late MCP call gets a clear error, not a fresh program
    assert (rig.link.stats.ended_by_scheduler, rig.link.stats.ended_by_env) == (1, 0)
    assert rig.scheduler.stats.terminated == {"released": 1}


async def test_program_end_on_the_mcp_side_releases_the_scheduler_side_exactly_once(rig: Rig) -> None:
    sandbox = await _with_sandbox(rig, "p2")
    report = await rig.registry.end("p2", "ended by program_end")
    await rig.settle()
    assert report.sandboxes_destroyed == 1 and sandbox not in rig.backend.live
    assert rig.scheduler.program("p2").status is Status.TERMINATED
    assert rig.scheduler.program("p2").terminated_reason == "released"
    assert rig.link.envs.end_calls == {"p2": 1}  # the scheduler's end notification did not end it again
    assert (rig.link.stats.ended_by_scheduler, rig.link.stats.ended_by_env) == (0, 1)
    # A late tool event does not resurrect it; a second end changes nothing on either side.
    await rig.scheduler.on_tool_event(ToolEvent("tool_start", "p2", sandbox, "sandbox_exec", "c2", 0.0))
    assert [p.program_id for p in rig.scheduler.programs()] == []
    rig.link.env_ended("p2")
    await rig.link.on_scheduler_end("p2")
    await rig.settle()
    assert rig.link.envs.end_calls == {"p2": 1} and rig.scheduler.stats.terminated == {"released": 1}


async def test_inactivity_of_a_program_only_the_mcp_side_knows_ends_it_there(rig: Rig) -> None:
    now = [0.0]
    config = ServerConfig(program_idle_timeout_s=10)
    registry = ProgramRegistry(rig.manager, config, clock=lambda: now[0], idle_guard=rig.link.live_in_scheduler)
    registry.state("env-only")
    registry.state("both")
    await rig.scheduler.on_tool_event(ToolEvent("tool_end", "both", None, "file_read", "c3", 0.0))
    now[0] = 11.0
    # The scheduler tracks 'both' (its own inactivity timeout decides); 'env-only' is idle on the only side.
    assert await registry.reap_idle() == ["env-only"]
    assert registry.get("both") is not None
    await registry.close()


async def test_a_restore_prepares_the_environment_the_program_last_acquired(rig: Rig) -> None:
    lease = await rig.manager.acquire("p3", OTHER)
    lease = await rig.manager.acquire("p3", SPEC)  # the last one acquired is what gets prepared
    await rig.manager.release(lease)
    rig.link.on_restore("p3")
    rig.link.on_restore("p3")  # prepared at the head of the queue, then restored: prepared once
    await rig.settle()
    assert rig.link.stats.prepares == 1 and rig.manager.provisioner.is_prepared("p3", SPEC)
    assert rig.manager.provisioner.preparation_stats().requested == 1
    again = await rig.manager.acquire("p3", SPEC)
    assert rig.manager.sandbox_info(again).origin == "prepared"
    assert rig.manager.provisioner.preparation_stats().ready_at_acquire == 1


async def test_a_restore_prepares_nothing_when_the_sandbox_is_held_or_the_program_ended(rig: Rig) -> None:
    rig.link.on_restore("never-acquired")
    await _with_sandbox(rig, "p4")
    rig.link.on_restore("p4")  # still holds a sandbox of its spec
    await rig.settle()
    assert rig.link.stats.prepares_skipped == 2 and rig.manager.provisioner.preparation_stats().requested == 0
    await rig.registry.end("p4", "ended by program_end")
    rig.link.on_restore("p4")
    await rig.settle()
    assert rig.manager.provisioner.preparation_stats().requested == 0 and rig.link.envs.last_spec("p4") is None


def _fake_vllm(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/metrics":  # 64 blocks x 16 tokens = a 1024-token KV pool
        return httpx.Response(200, text='vllm:cache_config_info{block_size="16",num_gpu_blocks="64"} 1.0\n')
    return httpx.Response(404)


async def test_the_scheduler_calls_the_restore_hook_on_restores_only() -> None:
    now = [0.0]
    policy = PolicyConfig(time_decay=False, max_wait_s=1.0, min_residency_s=0.0, aging_rate=0.0)
    config = SchedulerConfig(backends=(BACKEND,), policy=policy, interval_s=1000, backend_refresh_s=1000)
    scheduler = Scheduler(config, clock=lambda: now[0])
    restored: list[str] = []
    scheduler.add_restore_listener(restored.append)
    scheduler.add_restore_listener(lambda _: 1 / 0)  # a failing listener is logged and changes nothing
    async with httpx.AsyncClient(transport=httpx.MockTransport(_fake_vllm)) as client:
        await scheduler.start(client)
        try:
            body: dict[str, Any] = {"prompt": [1] * 600}
            a = await scheduler.admit("A", "completion", body)  # admitted: a first admission, not a restore
            scheduler.finish(a, usage=Usage(600, 10), completed=True)
            waiting_b = asyncio.create_task(scheduler.admit("B", "completion", body))
            await asyncio.sleep(0)
            now[0] += 1.5  # B starves: A (acting) is paused for it
            scheduler.tick()
            b = await waiting_b
            assert scheduler.program("A").status is Status.PAUSED and restored == []
            waiting_a = asyncio.create_task(scheduler.admit("A", "completion", {"prompt": [1] * 620}))
            await asyncio.sleep(0)
            assert scheduler.restore_queue(3) == ["A"]  # the only ready paused program: the head of the queue
            scheduler.finish(b, usage=Usage(600, 10), completed=True)
            now[0] += 1.5  # now A starves: B is paused and A restored
            scheduler.tick()
            await waiting_a
            assert restored == ["A"] and scheduler.program("A").restores == 1
        finally:
            await scheduler.close()


async def test_a_restore_during_the_programs_end_prepares_nothing(rig: Rig) -> None:
    await _with_sandbox(rig, "p5")
    ending = asyncio.Event()
    gate = asyncio.Event()

    async def slow_listener(event: object) -> None:
        if isinstance(event, SandboxReleased) and event.program_id == "p5":
            ending.set()
            await gate.wait()  # the manager is still ending p5: its program_ended is not out yet

    rig.manager.events.add_lifecycle_listener(slow_listener)
    end = asyncio.create_task(rig.registry.end("p5", "ended by program_end"))
    await ending.wait()
    rig.link.on_restore("p5")  # a restore seen meanwhile has nothing to prepare
    await rig.settle()
    gate.set()
    await end
    await rig.settle()
    assert rig.manager.provisioner.preparation_stats().requested == 0 and rig.link.envs.last_spec("p5") is None
