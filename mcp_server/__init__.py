"""Thunder's MCP front-end: sandboxes as tools, every call attributed to a program.

``build_server(manager, config)`` gives an ``MCPServer`` (a ``ThunderServer``); ``create_http_app``
serves it over streamable HTTP behind a bearer token; ``run_stdio`` over stdin/stdout.
"""

from .config import HttpConfig, ServerConfig
from .http import create_http_app, http_lifespan
from .programs import ProgramRegistry
from .server import ThunderServer, build_server
from .stdio import run_stdio

__all__ = [
    "HttpConfig",
    "ProgramRegistry",
    "ServerConfig",
    "ThunderServer",
    "build_server",
    "create_http_app",
    "http_lifespan",
    "run_stdio",
]
