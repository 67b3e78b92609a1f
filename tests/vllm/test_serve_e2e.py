"""`thunder demo --quick` and `thunder serve` end to end: the real CPU vLLM (fixture `cpu_vllm`), the real
Docker Engine, MCP over HTTP with the SDK client. Every program completes, the KV pool is oversubscribed so
programs are paused and restored, environments are prepared ahead of restores, each program ends exactly once
on both sides, and nothing is left: not in the server's view, not on the engine after shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from thunder_sched.policy import Status
from thunder_serve import CombinedServer
from thunder_serve.demo import DemoConfig, run_local_demo

from ..engine import engine_leftovers, require_engine

pytestmark = pytest.mark.vllm

THUNDER = str(Path(sys.executable).with_name("thunder"))


async def test_quick_demo_pauses_restores_prepares_ahead_and_leaks_nothing(cpu_vllm) -> None:
    await require_engine()
    namespace = "test-e2e-" + secrets.token_hex(3)
    seen: dict[str, object] = {}

    def inspect(combined: CombinedServer) -> None:  # after every program ended, before the server stops
        seen["end_calls"] = dict(combined.link.envs.end_calls)
        seen["terminated"] = [p for p in combined.scheduler.programs(include_terminated=True) if not p.ephemeral]
        seen["link"] = combined.link.stats

    report = await run_local_demo(DemoConfig.quick(), backend_url=cpu_vllm.url, namespace=namespace, inspect=inspect)
    print(report.model_dump_json())  # the figures, in the test log
    assert report.errors == []
    assert report.programs == report.programs_completed == 6
    assert report.steps == 6 * 4 and report.llm_calls == 6 * 4
    assert report.oversubscription > 1.2, "the programs' contexts must outgrow the KV pool"
    assert report.pauses > 0 and report.restores > 0
    assert report.envs_prepared_ahead > 0
    assert report.sandbox_create_s["prepared"] < report.sandbox_create_s["cold"]
    assert report.leaked == 0, report.leaked_detail
    # Exactly once on each side: one end_program per program, one scheduler termination per program.
    end_calls = seen["end_calls"]
    assert isinstance(end_calls, dict) and len(end_calls) == 6 and set(end_calls.values()) == {1}
    terminated = seen["terminated"]
    assert isinstance(terminated, list) and len(terminated) == 6
    assert all(p.status is Status.TERMINATED and p.terminated_reason == "released" for p in terminated)
    assert {p.program_id for p in terminated} == set(end_calls)
    # The server closed: its namespace has nothing left on the engine (sandboxes, prepared ones, templates).
    assert await engine_leftovers(namespace) == []


@contextlib.asynccontextmanager
async def thunder_serve(backend: str, namespace: str, token: str) -> AsyncIterator[tuple[str, list[str]]]:
    """`thunder serve` as a real process on a free port; yields its URL and (at exit) its stderr lines."""
    env = {**os.environ, "THUNDER_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        THUNDER, "serve", "--backend", backend, "--port", "0", "--namespace", namespace,
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        url = None
        async with asyncio.timeout(60):
            while url is None:
                line = (await proc.stderr.readline()).decode()
                assert line, f"thunder serve exited before serving: {''.join(lines)}"
                lines.append(line)
                found = re.search(r"serving on (http://\S+)", line)
                url = found.group(1) if found else None
        yield url, lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 60)
        lines.extend(rest.decode().splitlines(keepends=True))
        assert await asyncio.wait_for(proc.wait(), 60) == 0, "".join(lines)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        THUNDER, *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_thunder_serve_status_and_demo_against_it_as_processes(cpu_vllm) -> None:
    await require_engine()
    namespace = "test-serve-" + secrets.token_hex(3)
    token = "e2e-token-" + secrets.token_hex(12)
    async with thunder_serve(cpu_vllm.url, namespace, token) as (url, lines):
        code, out, err = await run_cli("status", "--url", url, "--json")
        assert code != 0 and "401" in err and "--token" in err  # program state needs the server's token
        code, out, err = await run_cli("status", "--url", url, "--json", env={"THUNDER_TOKEN": token})
        assert code == 0, err
        status = json.loads(out)
        assert status["namespace"] == namespace and status["backends"][0]["capacity_tokens"] > 0
        code, out, err = await run_cli(
            "demo", "--server", url, "--programs", "2", "--steps", "2", "--oversubscription", "0.3",
            env={"THUNDER_TOKEN": token},
        )  # fmt: skip
        assert code == 0, err
        report = json.loads(out.strip().splitlines()[-1])  # the last line is the JSON summary
        assert report["programs_completed"] == 2 and report["steps"] == 4 and report["leaked"] == 0
        code, out, err = await run_cli("status", "--url", url, env={"THUNDER_TOKEN": token})
        assert code == 0 and "no live programs" in out and "by MCP 2" in out, out + err
    banner = "".join(lines)
    assert f"{url}/v1" in banner and f"{url}/mcp" in banner and "shutting down" in banner
    assert token not in banner  # given by the environment: never printed
    assert await engine_leftovers(namespace) == []
