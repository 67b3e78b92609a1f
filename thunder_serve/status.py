"""`GET /thunder/status`: every live program as both sides see it, the counters, and what the server holds.

The same models parse the document back in `thunder status` and `thunder demo`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from pydantic import BaseModel

from mcp_server import ProgramRegistry
from thunder_env import EnvManager
from thunder_sched.scheduler import Scheduler

from .link import ProgramLink

log = logging.getLogger(__name__)

DISK_TIMEOUT_S = 10.0  # the engine walks every writable layer for sizes: never let it hang a status call


class BackendStatus(BaseModel):
    url: str
    healthy: bool
    capacity_tokens: int
    used_tokens: float
    host_tier_tokens: int = 0  # host (CPU) KV tier; 0 without one
    host_tier_used_tokens: int = 0  # paused programs' KV accounted in it


class ProgramStatus(BaseModel):
    program_id: str
    status: str  # active | paused (scheduler) | env-only (known to the MCP side only)
    phase: str  # reasoning | acting | - (not seen by the scheduler)
    tokens: int
    backend: str | None
    steps: int
    pauses: int
    restores: int
    tools_running: int
    sandboxes: list[str]
    disk_bytes: int | None  # unique bytes of its sandboxes and snapshots; None when not measured
    mcp: bool  # the MCP server has state for it


class Counters(BaseModel):
    pauses: int
    restores: int
    admissions: int
    kv_lost: int
    terminated: dict[str, int]
    prepared_requested: int
    prepared_ready_at_acquire: int  # the paper's "environment prepared ahead": envs_prepared_ahead
    prepared_waited_at_acquire: int
    prepared_failed: int
    prepared_expired: int
    prepares_on_restore: int
    ended_by_scheduler: int
    ended_by_env: int


class Resources(BaseModel):
    """What the server holds now; after every program ended, all of it should be zero (templates aside)."""

    programs: int
    sandboxes: int
    containers: int  # containers of this server's env manager on the engine (sandboxes, prepared, warm)
    snapshots: int  # program snapshots (template snapshots are a shared cache, not counted)
    ports: int

    def total(self) -> int:
        return self.programs + self.sandboxes + self.containers + self.snapshots + self.ports


class StatusReport(BaseModel):
    uptime_s: float
    namespace: str
    backends: list[BackendStatus]
    counters: Counters
    resources: Resources
    programs: list[ProgramStatus]


async def build_status(
    scheduler: Scheduler,
    manager: EnvManager,
    registry: ProgramRegistry,
    link: ProgramLink,
    *,
    started_at: float,
    disk: bool = True,
) -> StatusReport:
    containers = await _containers(manager)
    disk_by_program = await _disk_by_program(manager) if disk else None
    snapshot = scheduler.snapshot()
    scheduled = {info.program_id: info for info in scheduler.programs() if not info.ephemeral}
    in_mcp = set(registry.programs())
    sandboxes = manager.sandboxes()
    by_program: dict[str, list[str]] = {}
    for sandbox in sandboxes:
        for program_id in sandbox.programs:
            by_program.setdefault(program_id, []).append(sandbox.sandbox_id)
    ids = sorted(set(scheduled) | in_mcp | set(manager.programs()))
    programs = []
    for program_id in ids:
        info = scheduled.get(program_id)
        programs.append(
            ProgramStatus(
                program_id=program_id,
                status=info.status.value if info else "env-only",
                phase=info.phase.value if info else "-",
                tokens=info.tokens if info else 0,
                backend=info.backend if info else None,
                steps=info.steps if info else 0,
                pauses=info.pauses if info else 0,
                restores=info.restores if info else 0,
                tools_running=info.tools_running if info else 0,
                sandboxes=sorted(by_program.get(program_id, [])),
                disk_bytes=None if disk_by_program is None else disk_by_program.get(program_id, 0),
                mcp=program_id in in_mcp,
            )
        )
    prepared = dataclasses.asdict(manager.provisioner.preparation_stats())
    stats = scheduler.stats
    return StatusReport(
        uptime_s=round(time.monotonic() - started_at, 3),
        namespace=manager.config.namespace,
        backends=[
            BackendStatus(
                url=url,
                healthy=snapshot.backend_healthy[url],
                capacity_tokens=capacity,
                used_tokens=round(snapshot.backend_used[url], 1),
                host_tier_tokens=snapshot.backend_host_tier.get(url, 0),
                host_tier_used_tokens=snapshot.backend_host_tier_used.get(url, 0),
            )
            for url, capacity in snapshot.backend_capacity.items()
        ],
        counters=Counters(
            pauses=sum(stats.pauses.values()),
            restores=stats.restores,
            admissions=stats.admissions,
            kv_lost=stats.kv_lost,
            terminated=dict(stats.terminated),
            prepared_requested=prepared["requested"],
            prepared_ready_at_acquire=prepared["ready_at_acquire"],
            prepared_waited_at_acquire=prepared["waited_at_acquire"],
            prepared_failed=prepared["failed"],
            prepared_expired=prepared["expired"],
            prepares_on_restore=link.stats.prepares,
            ended_by_scheduler=link.stats.ended_by_scheduler,
            ended_by_env=link.stats.ended_by_env,
        ),
        resources=Resources(
            programs=len(ids),
            sandboxes=len(sandboxes),
            containers=containers,
            snapshots=sum(1 for s in manager.provisioner.snapshots() if s.kind != "template"),
            ports=sum(len(s.ports) for s in sandboxes),
        ),
        programs=programs,
    )


async def _containers(manager: EnvManager) -> int:
    found = await manager.backend.list_managed(
        {"thunder.namespace": manager.config.namespace, "thunder.instance": manager.instance_id}
    )
    return sum(1 for resource in found if resource.kind == "container")


async def _disk_by_program(manager: EnvManager) -> dict[str, int] | None:
    try:
        report = await asyncio.wait_for(manager.provisioner.disk_usage(), DISK_TIMEOUT_S)
    except (TimeoutError, Exception) as exc:  # sizes are informative: the rest of the status still matters
        log.warning("disk usage unavailable for the status: %r", exc)
        return None
    return dict(report.programs)
