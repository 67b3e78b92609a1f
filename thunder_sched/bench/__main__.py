"""python -m thunder_sched.bench [SUBCOMMAND] ...: without a subcommand, the mode comparison (see cli.py)."""

from __future__ import annotations

import importlib
import sys

# Subcommands live in their own modules, each with `main(argv) -> int`; imported only when asked for.
SUBCOMMANDS = {"control": "thunder_sched.bench.control"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return int(importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]))
    from thunder_sched.bench.cli import main as compare_main

    return compare_main(argv)


if __name__ == "__main__":
    sys.exit(main())
