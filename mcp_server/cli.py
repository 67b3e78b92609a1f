"""``thunder-mcp``: Thunder's sandboxes as MCP tools, over stdio (default) or streamable HTTP.

The only place that reads the environment: THUNDER_MCP_TOKEN (HTTP token), THUNDER_PROGRAM_ID
(stdio program), THUNDER_SCHEDULER_TOKEN and THUNDER_NOTIFIER_TOKEN (the scheduler coupling).
Everything else is passed down as typed configs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from thunder_common.program_ids import check_program_id
from thunder_common.serving import serving
from thunder_env import EnvManager, ManagerConfig, ThunderError
from thunder_env.backend_config import BackendConfig, DockerBackendConfig
from thunder_env.backend_factory import open_backend

from .config import HttpConfig, SchedulerLinkConfig, ServerConfig
from .delivery import PostSender
from .http import create_http_app
from .scheduler_link import SchedulerLink
from .server import ThunderServer, build_server
from .stdio import run_stdio

log = logging.getLogger("thunder_mcp")


def build_parser(prog: str = "thunder-mcp") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve Thunder sandboxes as MCP tools. stdio by default; --http serves streamable HTTP "
        "at /mcp and /p/<program_id>/mcp with a bearer token.",
    )
    p.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="HTTP: port (default: %(default)s)")
    p.add_argument(
        "--token",
        default=None,
        help="HTTP: bearer token granting every program (default: $THUNDER_MCP_TOKEN, else generated)",
    )
    p.add_argument(
        "--program-token",
        action="append",
        default=[],
        metavar="PROGRAM=TOKEN",
        help="HTTP: a token confined to one program (repeatable)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="HTTP: extra Host header value to accept (DNS-rebinding check; repeatable)",
    )
    p.add_argument(
        "--program-header",
        action="append",
        default=[],
        metavar="NAME",
        help="HTTP: a header that names the program of a request naming none by path, X-Program-Id or program "
        "token: an agent's own run id (repeatable, first present wins; replaces the default "
        "X-Claude-Code-Session-Id and X-OpenHands-ServerConversation-ID; 'none': no such header)",
    )
    p.add_argument(
        "--program-id",
        default=None,
        help="stdio: the program of this session (default: $THUNDER_PROGRAM_ID, else generated)",
    )
    p.add_argument(
        "--namespace", default="mcp", help="label namespace of the sandboxes this server creates (default: %(default)s)"
    )
    p.add_argument("--default-image", default=ServerConfig.model_fields["default_image"].default)
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=ServerConfig.model_fields["program_idle_timeout_s"].default,
        help="end a program after this many seconds without a tool call (0: never)",
    )
    p.add_argument("--allow-bridge-network", action="store_true", help="let sandboxes reach the internet")
    p.add_argument(
        "--scheduler-url",
        default=None,
        metavar="URL",
        help="a separately running thunder-sched: tool events and program ends are posted there",
    )
    p.add_argument(
        "--scheduler-token",
        default=None,
        help="bearer token sent to --scheduler-url (default: $THUNDER_SCHEDULER_TOKEN, else none)",
    )
    p.add_argument(
        "--notifier-token",
        default=None,
        help="HTTP: a token that reaches only POST /programs/<id>/end, for the scheduler's notifier "
        "(default: $THUNDER_NOTIFIER_TOKEN; the server token always does)",
    )
    p.add_argument(
        "--docker-url",
        default=None,
        metavar="URL",
        help="the Docker Engine of the sandboxes (default: $DOCKER_HOST, else the local socket)",
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def scheduler_link_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> SchedulerLinkConfig | None:
    """The scheduler to report to, or None (no --scheduler-url)."""
    token = args.scheduler_token or environ.get("THUNDER_SCHEDULER_TOKEN") or None
    if args.scheduler_url is None:
        if args.scheduler_token:
            raise ValueError("--scheduler-token needs --scheduler-url")
        return None
    return SchedulerLinkConfig(url=args.scheduler_url, token=token)


def configs_from_args(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[ManagerConfig, ServerConfig, HttpConfig | None, bool]:
    """The typed configs, and whether the HTTP token was generated (then it must be shown once)."""
    manager_config = ManagerConfig(namespace=args.namespace)
    program_id = args.program_id or environ.get("THUNDER_PROGRAM_ID") or None
    if args.http:
        if args.program_id:
            raise ValueError("--program-id is for stdio; over HTTP use /p/<program_id>/mcp or X-Program-Id")
        program_id = None
    elif program_id is None:
        program_id = "stdio-" + secrets.token_hex(6)  # one program per server process
    server_config = ServerConfig(
        default_program_id=check_program_id(program_id) if program_id else None,
        default_image=args.default_image,
        program_idle_timeout_s=args.idle_timeout or None,
        allow_bridge_network=args.allow_bridge_network,
    )
    if not args.http:
        if args.notifier_token:
            raise ValueError("--notifier-token is for --http (the scheduler's notifier posts over HTTP)")
        return manager_config, server_config, None, False
    token = args.token or environ.get("THUNDER_MCP_TOKEN") or None
    generated = token is None
    program_tokens: dict[str, str] = {}
    for item in args.program_token:
        program, sep, program_token = item.partition("=")
        if not sep or not program or not program_token:
            raise ValueError(f"--program-token wants PROGRAM=TOKEN, got {item!r}")
        program_tokens[program_token] = program
    http_config = HttpConfig(
        host=args.host,
        port=args.port,
        token=token or secrets.token_urlsafe(32),
        program_tokens=program_tokens,
        allowed_hosts=tuple(args.allowed_host),
        **({"program_headers": program_headers(args.program_header)} if args.program_header else {}),
        notifier_token=args.notifier_token or environ.get("THUNDER_NOTIFIER_TOKEN") or None,
    )
    return manager_config, server_config, http_config, generated


def program_headers(names: list[str]) -> tuple[str, ...]:
    """The --program-header flags: 'none' alone means no header names a program."""
    return () if names == ["none"] else tuple(names)


def claude_command(url: str, token: str) -> str:
    return f'claude mcp add --transport http thunder {url} --header "Authorization: Bearer {token}"'


def banner(url: str, token: str, generated: bool, show_claude: bool) -> str:
    lines = [f"thunder-mcp: streamable HTTP at {url} (per program: /p/<program_id>/mcp or header X-Program-Id)"]
    if generated:
        lines.append(f"thunder-mcp: generated bearer token (shown once): {token}")
    if show_claude or generated:
        lines.append("thunder-mcp: add it to Claude Code with:\n  " + claude_command(url, token))
    return "\n".join(lines)


async def serve(
    manager_config: ManagerConfig,
    server_config: ServerConfig,
    http: HttpConfig | None,
    *,
    generated_token: bool = False,
    show_claude: bool = False,
    scheduler: SchedulerLinkConfig | None = None,
    backend_config: BackendConfig | None = None,
) -> None:
    async with open_backend(backend_config) as backend:
        manager = EnvManager(backend, manager_config)
        await manager.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                server = build_server(manager, server_config)
                if scheduler is not None:
                    # Entered first, left last: the ends of the shutdown (the server's close) still go out.
                    sender = await stack.enter_async_context(PostSender(scheduler))
                    SchedulerLink(sender).attach(manager, server.programs)
                    stack.push_async_callback(server.aclose)
                if http is None:
                    await run_stdio(server)
                else:
                    await _serve_http(server, http, generated_token, show_claude)
        finally:
            await manager.close()


async def _serve_http(server: ThunderServer, http: HttpConfig, generated_token: bool, show_claude: bool) -> None:
    async with serving(create_http_app(server, http), http.host, http.port) as running:
        # The signals only ask uvicorn to stop (serving leaves them to us): the env manager then closes and
        # queued scheduler posts drain before the process exits (see _run).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lambda: setattr(running.server, "should_exit", True))
        print(banner(running.url + "/mcp", http.token, generated_token, show_claude), file=sys.stderr, flush=True)
        await running.task


def main(argv: Sequence[str] | None = None, *, show_claude: bool = False) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        manager_config, server_config, http, generated = configs_from_args(args, os.environ)
        scheduler = scheduler_link_from_args(args, os.environ)
    except ValidationError as exc:  # without the input values: a token must not be echoed
        parser.error("; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        _run(
            serve(
                manager_config,
                server_config,
                http,
                generated_token=generated,
                show_claude=show_claude,
                scheduler=scheduler,
                backend_config=DockerBackendConfig(url=args.docker_url),
            ),
            stdio=http is None,
        )
    except ThunderError as exc:
        print(f"thunder-mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _run(coro: object, *, stdio: bool) -> None:
    """Run the server; over stdio, SIGTERM/SIGINT cancel it so that every program still ends cleanly
    (over HTTP they stop uvicorn, which ends every program in its lifespan)."""

    async def runner() -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        if stdio:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


if __name__ == "__main__":
    raise SystemExit(main())
