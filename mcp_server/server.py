"""build_server: the Thunder tools on an ``MCPServer``, bound to an env manager."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from thunder_env import EnvManager

from .config import ServerConfig
from .fdlimit import raise_open_files_limit
from .programs import ProgramRegistry
from .tools import Deps, register_all
from .tools.sandboxes import offered_images


def instructions(config: ServerConfig) -> str:
    templates = ", ".join(f"'{name}' ({spec.image})" for name, spec in sorted(config.templates.items())) or "none"
    roots = ", ".join(config.extra_file_roots) or "nothing else"
    return f"""Thunder gives you Linux sandboxes (isolated containers) to run commands and edit files in.

Workflow: sandbox_create -> sandbox_exec / file_read / file_write / file_edit / file_list -> sandbox_release.
When the whole task is finished, call program_end: it frees everything this program holds.

- Every call belongs to your program; you can only use sandboxes your program created or was given
  with sandbox_share. Sandbox ids look like 'sb-1a2b3c4d5e6f'.
- sandbox_create: templates {templates}; default image {config.default_image}; images offered:
  {", ".join(offered_images(config))}; no network unless asked.
- sandbox_exec runs '/bin/sh -c <command>'. It waits timeout_s seconds (default {config.default_wait_s:g});
  a command still running then keeps running in the background and you get a process_id: poll it with
  process_output (pass back next_stdout_offset/next_stderr_offset; wait_s to wait for the end), stop it
  with process_kill. Use background=true for servers and watchers.
- Output is cut in the middle beyond {config.output_limit_bytes} bytes per stream (head and tail kept,
  truncated=true with total sizes): redirect big output to a file and read parts of it.
- File tools take paths relative to the sandbox workdir or absolute, and only reach the workdir and
  {roots} (symlinks are followed inside the sandbox); use sandbox_exec elsewhere.
  file_edit replaces an exact, unique piece of text; read the file first.
- sandbox_snapshot saves a sandbox's files; sandbox_fork starts copies of a snapshot.
- port_expose makes a port of a sandbox created with network='internal' reachable from the server's machine.
  Your program's network='internal' sandboxes reach each other (no other program's, no internet).
- Limits per program: {config.max_processes_per_program} commands at once (sandbox_exec commands, waited for
  or in the background, and file tool calls) and {config.max_ports_per_program} exposed ports; past them a
  call is refused until some finish.
- A program idle for {_duration(config.program_idle_timeout_s)} is ended and its sandboxes reclaimed."""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "ever (never)"
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"


class ThunderServer(MCPServer[Any]):
    """An ``MCPServer`` with Thunder's tools and the registry of the programs calling it.

    Whoever runs it closes it (``await server.aclose()``): every program still open is then ended.
    """

    def __init__(self, manager: EnvManager, config: ServerConfig, programs: ProgramRegistry) -> None:
        super().__init__(
            name=config.name, title="Thunder sandboxes", instructions=instructions(config), version=_version()
        )
        self.manager = manager
        self.config = config
        self.programs = programs
        register_all(self, Deps(manager=manager, config=config, programs=programs))

    async def aclose(self) -> None:
        await self.programs.close()


def build_server(
    manager: EnvManager, config: ServerConfig | None = None, *, programs: ProgramRegistry | None = None
) -> ThunderServer:
    """The MCP server for ``manager``. The manager must be started; the caller closes both. Raises the
    process's soft open-files limit to its hard limit."""
    config = config or ServerConfig()
    raise_open_files_limit()  # many programs' commands and ports each hold a descriptor
    return ThunderServer(manager, config, programs or ProgramRegistry(manager, config))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thunder")
    except PackageNotFoundError:
        return "0"
