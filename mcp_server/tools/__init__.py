"""The tools, grouped by what they act on; ``register_all`` adds them to a server."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from .commands import register as register_commands
from .common import Deps
from .files import register as register_files
from .sandboxes import register as register_sandboxes


def register_all(server: MCPServer, deps: Deps) -> None:
    register_sandboxes(server, deps)
    register_commands(server, deps)
    register_files(server, deps)


__all__ = ["Deps", "register_all"]
