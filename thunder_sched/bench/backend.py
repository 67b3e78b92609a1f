"""The vLLM servers of a comparison: one already running, or a CPU vLLM started here and stopped afterwards,
optionally with a KV pool of a chosen size (the quick run's small pool; the ceiling's pool that holds every
program)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from thunder_sched.bench.modes import Engine
from thunder_sched.bench.runner import BenchError
from thunder_sched.cpu_vllm.server import CPU_BLOCK_SIZE, VllmServerConfig, estimate_pool_tokens
from thunder_sched.vllm_metrics import parse_cache_config


async def _describe(url: str, pgid: int | None) -> Engine:
    async with httpx.AsyncClient(timeout=30) as client:
        model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
        cache = parse_cache_config((await client.get(f"{url}/metrics")).text)
    if cache is None:
        raise BenchError(f"{url}/metrics has no vllm:cache_config_info: is it a vLLM server?")
    return Engine(url=url, model=model, capacity_tokens=cache.capacity_tokens, pgid=pgid)


@asynccontextmanager
async def attached_vllm(url: str) -> AsyncIterator[Engine]:
    """A server someone else runs (its process group, hence its CPU time, unknown)."""
    yield await _describe(url.rstrip("/"), None)


def pool_config(model_config: dict[str, object], tokens: int, dtype: str) -> VllmServerConfig:
    """A server config whose KV pool serves at least `tokens` tokens (whole blocks) of this model."""
    probe = 1 << 36  # big enough that whole-block rounding is negligible in the ratio
    per_token = probe / estimate_pool_tokens(model_config, probe, dtype)
    # One block more for the block vLLM reserves (its null block), half a block for its own bookkeeping.
    blocks = math.ceil(tokens / CPU_BLOCK_SIZE) + 1.5
    max_len = min(int(model_config.get("max_position_embeddings", tokens)), tokens)  # type: ignore[call-overload]
    return VllmServerConfig(
        kv_cache_memory_bytes=math.ceil(blocks * CPU_BLOCK_SIZE * per_token), max_model_len=max_len, dtype=dtype
    )


@asynccontextmanager
async def started_vllm(pool_tokens: int | None = None) -> AsyncIterator[Engine]:
    """A CPU vLLM started here: the default config, or a KV pool of at least `pool_tokens`."""
    from thunder_sched.cpu_vllm import CachePaths, CpuVllmServer, cache_root_from_env, ensure_cpu_vllm

    prepared = await ensure_cpu_vllm(CachePaths(cache_root_from_env(os.environ)))
    config = VllmServerConfig()
    if pool_tokens is not None:
        text = await asyncio.to_thread(Path(prepared.model_dir, "config.json").read_text)
        config = pool_config(json.loads(text), pool_tokens, config.dtype)
    log_path = prepared.logs_dir / f"bench-vllm-{time.strftime('%Y%m%d-%H%M%S')}.log"
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    async with CpuVllmServer(prepared.python, prepared.model_dir, config, log_path=log_path) as server:
        yield await _describe(server.url, server.pid)  # the supervisor leads the server's process group
