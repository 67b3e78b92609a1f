"""``python -m thunder_env.agent build [--cache-dir DIR]``: build the agent binary (make install runs it)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .build import DEFAULT_CACHE_DIR, AgentBuildError, ensure_agent_binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m thunder_env.agent")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="compile the sandbox exec agent (skipped when this source is built)")
    build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    try:
        path = asyncio.run(ensure_agent_binary(args.cache_dir))
    except (AgentBuildError, OSError) as exc:
        print(f"thunder-agent build failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
