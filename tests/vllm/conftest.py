"""Fixtures for integration tests against a real vLLM server running on this machine's CPU.

One server serves the whole session (startup takes about a minute). If the venv or the model cannot be
made, or the server does not start, the tests FAIL with the reason: a missing prerequisite is never a skip.
Prepare ahead of time with `python -m thunder_sched.cpu_vllm ensure` (installs on first use).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from thunder_sched.cpu_vllm import (
    CachePaths,
    CpuVllmError,
    CpuVllmServer,
    VllmServerConfig,
    cache_root_from_env,
    ensure_cpu_vllm,
)
from thunder_sched.cpu_vllm.ending import ensure_ending_model

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, so only tests under tests/vllm are marked.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.vllm)


@contextlib.asynccontextmanager
async def _running(
    python: Path, model_dir: Path, config: VllmServerConfig, log_path: Path, what: str
) -> AsyncIterator[CpuVllmServer]:
    server = CpuVllmServer(python, model_dir, config, log_path=log_path)
    try:
        await server.start()
    except CpuVllmError as exc:
        pytest.fail(f"{what} did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        await server.stop()


# Startup takes 40-70 s alone, but over 130 s was seen while other test suites share the 2 cores.
STARTUP_TIMEOUT_S = 360


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cpu_vllm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CpuVllmServer]:
    """A running CPU vLLM server: `.url` (no /v1), `.openai_url`, `.model`, `await .capacity_tokens()`.

    Its methods open their own HTTP clients, so tests may use it from any event loop.
    """
    paths = CachePaths(cache_root_from_env(os.environ))
    try:
        prepared = await ensure_cpu_vllm(paths)
    except CpuVllmError as exc:
        pytest.fail(f"cannot prepare the CPU vLLM under {paths.root}: {exc}", pytrace=False)
    log_path = tmp_path_factory.mktemp("cpu-vllm") / "server.log"
    config = VllmServerConfig(startup_timeout=STARTUP_TIMEOUT_S)
    async with _running(prepared.python, prepared.model_dir, config, log_path, "the CPU vLLM server") as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cpu_vllm_ending(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CpuVllmServer]:
    """A second CPU vLLM serving the variant of the test model whose answers end at once (served name
    `thunder-tiny-ends`), for clients that fail on an answer that never ends (Claude Code)."""
    paths = CachePaths(cache_root_from_env(os.environ))
    try:
        prepared = await ensure_cpu_vllm(paths)
        model_dir = await ensure_ending_model(prepared.python, prepared.model_dir)
    except CpuVllmError as exc:
        pytest.fail(f"cannot prepare the ending CPU vLLM model under {paths.root}: {exc}", pytrace=False)
    log_path = tmp_path_factory.mktemp("cpu-vllm-ending") / "server.log"
    config = VllmServerConfig(startup_timeout=STARTUP_TIMEOUT_S, served_model_name="thunder-tiny-ends")
    async with _running(prepared.python, model_dir, config, log_path, "the ending CPU vLLM server") as server:
        yield server
