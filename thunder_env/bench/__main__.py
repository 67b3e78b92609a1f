"""Dispatch: each benchmark module offers ``add_arguments(parser)`` and ``async run(args) -> dict``.

The last line printed is always one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys

BENCHMARKS = {
    "core": "thunder_env.bench.core",
    "pool": "thunder_env.bench.pool",
    "disk": "thunder_env.bench.disk",
    "agent": "thunder_env.bench.agent",
    "chaos": "thunder_env.bench.chaos",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m thunder_env.bench")
    subparsers = parser.add_subparsers(dest="benchmark", required=True)
    modules = {}
    for name, module_name in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        modules[name] = module
        sub = subparsers.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        sub.add_argument("--quick", action="store_true", help="a short run (under a minute)")
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    figures = asyncio.run(modules[args.benchmark].run(args))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
