"""Integration tests of the CPU vLLM helper: the real server, and the launcher's process handling."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

from thunder_sched.cpu_vllm import CpuVllmServer, ServerError, ServerStartTimeout, VllmMetrics, VllmServerConfig
from thunder_sched.cpu_vllm.server import estimate_pool_tokens

PARAGRAPH = (
    "The agent reads the report about the economy and writes a short plan for the next step. "
    "It opens the file, runs the tests, and checks the output for any error before it moves on. "
)


def _salt() -> str:
    return f"test-{uuid.uuid4().hex}"


async def _chat(client: httpx.AsyncClient, server: CpuVllmServer, content: str, salt: str) -> dict:
    response = await client.post(
        f"{server.openai_url}/chat/completions",
        json={
            "model": server.model,
            "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": content},
            ],
            "max_tokens": 24,
            "temperature": 0,
            "ignore_eos": True,
            "cache_salt": salt,
        },
    )
    response.raise_for_status()
    return response.json()


async def test_chat_completion_is_deterministic_at_temperature_zero(cpu_vllm: CpuVllmServer) -> None:
    prompt = PARAGRAPH * 4 + "What should the agent do next?"
    salt = _salt()
    async with httpx.AsyncClient(timeout=120) as client:
        cold = await _chat(client, cpu_vllm, prompt, salt)
        warm = await _chat(client, cpu_vllm, prompt, salt)  # served from the prefix cache
        other_salt = await _chat(client, cpu_vllm, prompt, _salt())  # computed from scratch again
    text = cold["choices"][0]["message"]["content"]
    assert cold["model"] == cpu_vllm.model
    assert cold["usage"]["completion_tokens"] == 24
    assert cold["choices"][0]["finish_reason"] == "length"
    assert text
    assert warm["choices"][0]["message"]["content"] == text
    assert other_salt["choices"][0]["message"]["content"] == text


async def test_streamed_chat_equals_non_streamed(cpu_vllm: CpuVllmServer) -> None:
    prompt = PARAGRAPH * 2 + "Summarize the plan."
    body = {
        "model": cpu_vllm.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(timeout=120) as client:
        plain = (await client.post(f"{cpu_vllm.openai_url}/chat/completions", json=body)).json()
        pieces = []
        async with client.stream(
            "POST", f"{cpu_vllm.openai_url}/chat/completions", json={**body, "stream": True}
        ) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = httpx.Response(200, content=line[len("data: ") :]).json()
                    for choice in chunk["choices"]:
                        pieces.append(choice["delta"].get("content") or "")
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]


async def test_capacity_is_blocks_times_block_size(cpu_vllm: CpuVllmServer) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(f"{cpu_vllm.url}/metrics")).text
    info = next(line for line in text.splitlines() if line.startswith("vllm:cache_config_info{"))
    blocks = int(re.search(r'num_gpu_blocks="(\d+)"', info).group(1))  # type: ignore[union-attr]
    block_size = int(re.search(r'block_size="(\d+)"', info).group(1))  # type: ignore[union-attr]
    capacity = await cpu_vllm.capacity_tokens()
    assert capacity == blocks * block_size
    assert capacity > 0
    # The launcher's own estimate (used to fit --max-model-len) agrees with what vLLM allocated.
    model_config = {"num_hidden_layers": 8, "num_key_value_heads": 1, "num_attention_heads": 16, "head_dim": 64}
    assert capacity == estimate_pool_tokens(model_config, cpu_vllm.config.kv_cache_memory_bytes, "bfloat16")
    assert cpu_vllm.max_model_len <= capacity


async def _metrics_after(server: CpuVllmServer, queries_at_least: float) -> VllmMetrics:
    """vLLM updates its counters just after answering; wait until the last request is counted."""
    deadline = time.monotonic() + 10
    while True:
        metrics = await server.metrics()
        if metrics.prefix_cache_queries >= queries_at_least or time.monotonic() > deadline:
            return metrics
        await asyncio.sleep(0.1)


async def test_prefix_cache_hits_within_a_salt_and_not_across_salts(cpu_vllm: CpuVllmServer) -> None:
    prompt = PARAGRAPH * 20  # about 1,500 tokens: several 128-token blocks
    salt, other = _salt(), _salt()

    async def complete(cache_salt: str) -> int:
        response = await client.post(
            f"{cpu_vllm.openai_url}/completions",
            json={"model": cpu_vllm.model, "prompt": prompt, "max_tokens": 1, "cache_salt": cache_salt},
        )
        response.raise_for_status()
        return int(response.json()["usage"]["prompt_tokens"])

    async with httpx.AsyncClient(timeout=120) as client:
        before = await cpu_vllm.metrics()
        tokens = await complete(salt)
        first = await _metrics_after(cpu_vllm, before.prefix_cache_queries + tokens)
        await complete(salt)
        second = await _metrics_after(cpu_vllm, first.prefix_cache_queries + tokens)
        await complete(other)
        third = await _metrics_after(cpu_vllm, second.prefix_cache_queries + tokens)

    block = before.block_size
    assert tokens > 4 * block
    assert first.prefix_cache_queries - before.prefix_cache_queries == tokens
    assert first.prefix_cache_hits == before.prefix_cache_hits  # a fresh salt starts cold
    # Same salt: every full block of the prompt but the one holding its last token is served from cache.
    hits = second.prefix_cache_hits - first.prefix_cache_hits
    assert (tokens - 1) // block * block <= hits <= tokens
    assert third.prefix_cache_hits == second.prefix_cache_hits  # another salt shares nothing


async def test_tokenizer_keeps_english_compact_and_round_trips(cpu_vllm: CpuVllmServer) -> None:
    text = "Please read the report and explain what the government should do next. It costs 1234 dollars."
    async with httpx.AsyncClient(timeout=30) as client:
        tokens = (await client.post(f"{cpu_vllm.url}/tokenize", json={"model": cpu_vllm.model, "prompt": text})).json()[
            "tokens"
        ]
        back = (
            await client.post(f"{cpu_vllm.url}/detokenize", json={"model": cpu_vllm.model, "tokens": tokens})
        ).json()["prompt"]
    assert back.endswith(text)
    assert len(tokens) <= 1.5 * len(text.split())  # whole words, not bytes


# -- process handling, with a stand-in server module (no vLLM needed; fast) -------------------------------

FAKE_SERVER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a server that ignores SIGTERM must still be stopped
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", STUBBORN])
with open(os.environ["FAKE_PIDS"], "w") as handle:
    handle.write(f"{os.getpid()} {child.pid}")
print("fake server listening nowhere", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _fake_server(tmp_path: Path, startup_timeout: float) -> tuple[CpuVllmServer, Path]:
    """A server whose `vllm.entrypoints.openai.api_server` never answers and ignores SIGTERM."""
    module = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    module.mkdir(parents=True)
    for package in (module, module.parent, module.parent.parent):
        (package / "__init__.py").write_text("")
    (module / "api_server.py").write_text(textwrap.dedent(FAKE_SERVER))
    pids_file = tmp_path / "pids"
    config = VllmServerConfig(
        max_model_len=128,
        startup_timeout=startup_timeout,
        stop_timeout=3,
        env={"PYTHONPATH": str(tmp_path / "fake"), "FAKE_PIDS": str(pids_file)},
    )
    return CpuVllmServer(Path(sys.executable), tmp_path, config, log_path=tmp_path / "server.log"), pids_file


def _read_pids(pids_file: Path) -> list[int]:
    try:
        return [int(pid) for pid in pids_file.read_text().split()]
    except (OSError, ValueError):
        return []


async def _fake_pids(pids_file: Path) -> list[int]:
    for _ in range(100):
        pids = await asyncio.to_thread(_read_pids, pids_file)
        if len(pids) == 2:
            return pids
        await asyncio.sleep(0.1)
    raise AssertionError(f"the fake server never wrote {pids_file}")


async def test_startup_timeout_reports_log_and_leaves_no_process(tmp_path: Path) -> None:
    server, pids_file = _fake_server(tmp_path, startup_timeout=3)
    with pytest.raises(ServerStartTimeout, match="fake server listening nowhere"):
        await server.start()
    pids = await _fake_pids(pids_file)
    assert not any(_alive(pid) for pid in pids)
    assert not server.running


async def test_cancelled_start_leaves_no_process(tmp_path: Path) -> None:
    server, pids_file = _fake_server(tmp_path, startup_timeout=60)
    starting = asyncio.create_task(server.start())
    pids = await _fake_pids(pids_file)
    assert all(_alive(pid) for pid in pids)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not any(_alive(pid) for pid in pids)
    assert not server.running


async def test_server_that_exits_during_startup_raises_with_log_tail(tmp_path: Path) -> None:
    # The project venv has no vllm, so `python -m vllm...` exits at once with an import error.
    config = VllmServerConfig(max_model_len=128, startup_timeout=60, env={"PYTHONPATH": ""})
    server = CpuVllmServer(Path(sys.executable), tmp_path, config, log_path=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"exited with code \d+ during startup(.|\n)*No module named"):
        await server.start()
    assert time.monotonic() - started < 30
    assert not server.running
