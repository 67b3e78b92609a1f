"""``make serve``: thunder-mcp over HTTP on 127.0.0.1:8765, printing the token and a `claude mcp add` line.

Any thunder-mcp option can follow (``python -m mcp_server.serve --port 9000``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["--http", *args], show_claude=True)


if __name__ == "__main__":
    raise SystemExit(main())
