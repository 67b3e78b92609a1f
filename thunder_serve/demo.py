"""`thunder demo`: N real agent programs against a combined server, sized to oversubscribe its KV pool.

`run_demo` drives any running combined server over HTTP; `run_local_demo` starts one in-process first (and
the CPU vLLM when no backend is given). The report's counters are deltas of the server's own counters over
the run; `leaked` is what the server still holds once every program has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from pydantic import BaseModel

from mcp_server import HttpConfig, ServerConfig
from mcp_server.config import default_templates
from thunder_common.serving import serving
from thunder_env import ManagerConfig, SandboxSpec
from thunder_sched.bench.workload import seeded_text
from thunder_sched.config import SchedulerConfig

from .app import STATUS_PATH, CombinedServer, open_combined
from .clients.demo_agent import DemoProgram, Plan, ProgramResult
from .config import CombinedConfig
from .errors import CombinedError, StatusUnavailableError
from .status import StatusReport

Say = Callable[[str], None]
CLEANUP_TIMEOUT_S = 30.0
DEMO_NAMESPACE = "demo"
# The template demo programs start their sandboxes from: busybox plus one setup step (built once, cached).
DEMO_TEMPLATE = SandboxSpec(
    image="thunder/base:latest",
    memory_bytes=128 << 20,
    pids_limit=64,
    setup=("mkdir -p /workspace/notes && echo 'thunder demo workspace' > /workspace/README",),
)


@dataclass(frozen=True)
class DemoConfig:
    programs: int = 10
    steps: int = 6
    # Target of the programs' total final context over the KV pool: above 1, the scheduler must pause some.
    oversubscription: float = 2.0
    output_tokens: int = 16
    system_words: int = 300
    task_words: int = 40
    template: str = "demo"
    seed: int = 0
    start_spread_s: float = 2.0
    max_context_share: float = 0.7  # a program's final context stays below this share of max_model_len

    def __post_init__(self) -> None:
        if self.programs < 1 or self.steps < 1:
            raise CombinedError(f"the demo needs at least one program and one step, got {self}")
        if self.oversubscription <= 0 or self.output_tokens < 1:
            raise CombinedError(f"oversubscription and output_tokens must be positive, got {self}")

    @classmethod
    def quick(cls, programs: int | None = None, **overrides: object) -> DemoConfig:
        settings: dict[str, object] = {"steps": 4, "oversubscription": 1.8, **overrides}
        return cls(programs=6 if programs is None else programs, **settings)  # type: ignore[arg-type]


class DemoReport(BaseModel):
    programs: int
    programs_completed: int
    steps: int
    pauses: int
    restores: int
    envs_prepared_ahead: int  # restores whose environment was ready when the program asked for it
    leaked: int  # total of leaked_detail
    leaked_detail: dict[str, int]  # containers, sandboxes, snapshots, ports, programs left after all ended
    oversubscription: float  # the programs' total final context / KV pool
    capacity_tokens: int
    llm_calls: int
    tool_calls: int
    sandbox_create_s: dict[str, float]  # median seconds of sandbox_create by origin (prepared, cold, warm)
    duration_s: float
    errors: list[str]


async def fetch_status(client: httpx.AsyncClient, *, disk: bool = False, token: str | None = None) -> StatusReport:
    # The token goes with this request only, not with the client's /v1 requests (which need none).
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        response = await client.get(STATUS_PATH, params={"disk": "1" if disk else "0"}, headers=headers)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise StatusUnavailableError(f"cannot read {client.base_url}{STATUS_PATH}: {exc}") from exc
    return StatusReport.model_validate(response.json())


async def _model_and_context(client: httpx.AsyncClient) -> tuple[str, int]:
    response = await client.get("/v1/models")
    if response.status_code != 200:
        raise CombinedError(f"GET /v1/models answered {response.status_code}: {response.text[:300]}")
    model = response.json()["data"][0]
    return str(model["id"]), int(model.get("max_model_len") or 4096)


def make_plan(config: DemoConfig, model: str, capacity: int, max_model_len: int) -> Plan:
    rng = random.Random(config.seed)
    system = "You are a careful agent that reads notes and runs commands. Reference:\n" + seeded_text(
        rng, config.system_words
    )
    base = int(1.5 * (config.system_words + config.task_words)) + 30
    final = min(config.oversubscription * capacity / config.programs, config.max_context_share * max_model_len)
    growth = int((final - base) / config.steps)
    if growth < config.output_tokens + 60:
        raise CombinedError(
            f"{config.programs} programs of {config.steps} steps cannot grow in a {capacity}-token pool "
            f"(max_model_len {max_model_len}): use fewer programs or steps"
        )
    return Plan(model, system, config.task_words, config.steps, config.output_tokens, growth, config.template)


async def run_demo(
    server_url: str,
    token: str,
    config: DemoConfig,
    *,
    say: Say | None = None,
    on_step: Callable[[], None] | None = None,
) -> DemoReport:
    """Run the demo's programs against the combined server at `server_url` (MCP bearer `token`)."""
    say = say or (lambda _: None)
    timeout = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)  # held requests wait for restores
    async with httpx.AsyncClient(base_url=server_url, timeout=timeout) as client:
        before = await fetch_status(client, token=token)
        capacity = sum(b.capacity_tokens for b in before.backends if b.healthy)
        if capacity <= 0:
            raise CombinedError(f"no healthy backend with a known KV capacity behind {server_url}: see /health")
        model, max_model_len = await _model_and_context(client)
        plan = make_plan(config, model, capacity, max_model_len)
        run_id = secrets.token_hex(3)
        say(
            f"demo {run_id}: {config.programs} programs x {config.steps} steps, +{plan.growth_tokens} tokens per "
            f"step, KV pool {capacity} tokens (target oversubscription {config.oversubscription:g})"
        )
        started = time.monotonic()
        programs = [
            DemoProgram(i, f"demo-{run_id}-{i}", plan, server_url=server_url, token=token, llm=client, seed=config.seed)
            for i in range(config.programs)
        ]
        delays = random.Random(config.seed + 1)

        async def launch(program: DemoProgram) -> ProgramResult:
            await asyncio.sleep(delays.uniform(0.0, config.start_spread_s))
            return await program.run(on_step)

        results = await asyncio.gather(*(launch(p) for p in programs))
        after = await _after_cleanup(client, {r.program_id for r in results}, token)
        duration = time.monotonic() - started
    return _report(results, before, after, capacity, duration)


async def _after_cleanup(client: httpx.AsyncClient, ids: set[str], token: str) -> StatusReport:
    """The status once the ends have propagated to both sides (or the timeout: then what is left leaked)."""
    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while True:
        status = await fetch_status(client, token=token)
        # A demo program holding anything (a sandbox, MCP state, scheduler state) is listed: none left is done.
        if not any(p.program_id in ids for p in status.programs) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.25)


def _report(
    results: list[ProgramResult], before: StatusReport, after: StatusReport, capacity: int, duration: float
) -> DemoReport:
    ids = {r.program_id for r in results}
    left_programs = sum(1 for p in after.programs if p.program_id in ids)
    res = after.resources
    leaked = {
        "containers": res.containers,
        "sandboxes": res.sandboxes,
        "snapshots": res.snapshots,
        "ports": res.ports,
        "programs": left_programs,
    }
    by_origin: dict[str, list[float]] = {}
    for result in results:
        for origin, seconds in result.creates:
            by_origin.setdefault(origin, []).append(seconds)
    b, a = before.counters, after.counters
    return DemoReport(
        programs=len(results),
        programs_completed=sum(r.completed for r in results),
        steps=sum(r.steps for r in results),
        pauses=a.pauses - b.pauses,
        restores=a.restores - b.restores,
        envs_prepared_ahead=a.prepared_ready_at_acquire - b.prepared_ready_at_acquire,
        leaked=sum(leaked.values()),
        leaked_detail=leaked,
        oversubscription=round(sum(r.tokens for r in results) / capacity, 3),
        capacity_tokens=capacity,
        llm_calls=sum(r.llm_calls for r in results),
        tool_calls=sum(r.tool_calls for r in results),
        sandbox_create_s={k: round(statistics.median(v), 3) for k, v in sorted(by_origin.items())},
        duration_s=round(duration, 1),
        errors=[f"{r.program_id}: {r.error}" for r in results if r.error][:10],
    )


def local_config(backends: list[str], *, namespace: str, token: str | None = None) -> CombinedConfig:
    """The in-process server of the demo: loopback, a free port, the `demo` template, its own namespace."""
    return CombinedConfig(
        scheduler=SchedulerConfig(backends=tuple(backends), interval_s=0.5),
        http=HttpConfig(host="127.0.0.1", port=0, token=token or secrets.token_urlsafe(32)),
        manager=ManagerConfig(namespace=namespace),
        server=ServerConfig(templates={**default_templates(), "demo": DEMO_TEMPLATE}),
    )


@contextlib.asynccontextmanager
async def _backend(backend_url: str | None, say: Say) -> AsyncIterator[str]:
    if backend_url is not None:
        yield backend_url
        return
    from thunder_sched.cpu_vllm import CachePaths, CpuVllmServer, cache_root_from_env, ensure_cpu_vllm

    say("starting the CPU vLLM (installs on first use; startup takes about a minute)")
    prepared = await ensure_cpu_vllm(CachePaths(cache_root_from_env(os.environ)))
    async with CpuVllmServer(prepared.python, prepared.model_dir, progress=say) as server:
        say(f"vLLM ready at {server.url} ({await server.capacity_tokens()} KV tokens)")
        yield server.url


async def run_local_demo(
    config: DemoConfig,
    *,
    backend_url: str | None = None,
    namespace: str | None = None,
    say: Say | None = None,
    on_step: Callable[[], None] | None = None,
    inspect: Callable[[CombinedServer], None] | None = None,
) -> DemoReport:
    """Start a combined server in-process (and the CPU vLLM unless `backend_url`), run the demo, stop both.

    `inspect` sees the live server after the programs ended, before it shuts down (tests)."""
    say = say or (lambda _: None)
    async with _backend(backend_url, say) as url:
        # One namespace for every demo: a run that died (killed, host crash) is reconciled by the next one.
        combined_config = local_config([url], namespace=namespace or DEMO_NAMESPACE)
        async with open_combined(combined_config) as combined, serving(combined.app) as running:
            say(f"combined server at {running.url}")
            report = await run_demo(running.url, combined_config.http.token, config, say=say, on_step=on_step)
            if inspect is not None:
                inspect(combined)
    return report
