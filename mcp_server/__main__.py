"""``python -m mcp_server``: the same as the ``thunder-mcp`` console script."""

from .cli import main

raise SystemExit(main())
