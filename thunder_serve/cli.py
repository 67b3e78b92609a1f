"""`thunder`: the combined server (`serve`), its programs (`status`) and an end-to-end demo (`demo`).

The only place of the product (`thunder_serve`) that reads the environment: THUNDER_TOKEN / THUNDER_MCP_TOKEN
(the MCP bearer token), THUNDER_URL (the server `status` and `demo --server` talk to), THUNDER_CACHE (the CPU
vLLM).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mcp_server import HttpConfig, ServerConfig
from mcp_server.cli import claude_command
from thunder_env import ManagerConfig, ThunderError
from thunder_sched.cli import parse_model_aliases
from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.program_ids import header_names, parse_program_id_rules

from .config import DEFAULT_NAMESPACE, DEFAULT_PORT, CombinedConfig
from .errors import CombinedError
from .render import render_status

app = typer.Typer(
    name="thunder",
    help="Thunder: one server for agent programs (LLM scheduling + MCP sandboxes), its status, and a demo.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)
TOKEN_ENV = ["THUNDER_TOKEN", "THUNDER_MCP_TOKEN"]
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
T = TypeVar("T")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]thunder:[/] {message}")
    return typer.Exit(code)


@app.command()
def serve(
    backend: Annotated[list[str], typer.Option("--backend", help="vLLM base URL (repeat for replicas)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = DEFAULT_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV,
            show_envvar=True,
            help="bearer token of /mcp, /programs, /thunder/status and /metrics (default: generated)",
        ),
    ] = None,
    metrics_token: Annotated[
        str | None,
        typer.Option(envvar="THUNDER_METRICS_TOKEN", show_envvar=True, help="read-only bearer token of /metrics"),
    ] = None,
    namespace: Annotated[str, typer.Option(help="label namespace of the sandboxes")] = DEFAULT_NAMESPACE,
    idle_timeout: Annotated[
        float, typer.Option(help="end a program after this many seconds without LLM request or tool call")
    ] = SchedulerConfig.model_fields["inactivity_timeout_s"].default,
    lambda_max: Annotated[float, typer.Option(help="pause when load > lambda_max x KV pool")] = (
        PolicyConfig.model_fields["lambda_max"].default
    ),
    tau: Annotated[float, typer.Option(help="acting-token decay constant, seconds")] = (
        PolicyConfig.model_fields["tau_s"].default
    ),
    interval: Annotated[float, typer.Option(help="period of the scheduler's check, seconds")] = (
        SchedulerConfig.model_fields["interval_s"].default
    ),
    model_alias: Annotated[
        list[str] | None,
        typer.Option(
            "--model-alias",
            help="NAME=SERVED: serve requests for model NAME with the backend's model SERVED (repeatable; "
            "NAME '*' matches every other name), e.g. Claude Code's Claude model names",
        ),
    ] = None,
    program_id_from: Annotated[
        list[str] | None,
        typer.Option(
            "--program-id-from",
            help="RULE: where a request that names no program (body program_id, X-Program-Id, /p/<id>/) finds "
            "one: 'header:NAME' (LLM and MCP requests) or 'user-id:REGEX' (the Messages body's metadata.user_id); "
            "repeatable, first match wins; replaces the default (Claude Code's session id, OpenHands' conversation "
            "id); 'none': no rule",
        ),
    ] = None,
    prepare: Annotated[bool, typer.Option(help="prepare a paused program's environment before its restore")] = True,
    default_image: Annotated[str, typer.Option(help="image of sandbox_create without template")] = (
        ServerConfig.model_fields["default_image"].default
    ),
    allow_bridge_network: Annotated[bool, typer.Option(help="let sandboxes reach the internet")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    """Serve the OpenAI API (/v1), MCP (/mcp, /p/<program_id>/mcp), /metrics and /thunder/status in one process."""
    generated = token is None
    try:
        rules = parse_program_id_rules(program_id_from or [])
        config = CombinedConfig(
            scheduler=SchedulerConfig(
                backends=tuple(backend),
                policy=PolicyConfig(lambda_max=lambda_max, tau_s=tau),
                interval_s=interval,
                inactivity_timeout_s=idle_timeout,
                model_aliases=parse_model_aliases(model_alias or []),
                program_id_rules=rules,
            ),
            http=HttpConfig(
                host=host,
                port=port,
                token=token or secrets.token_urlsafe(32),
                metrics_token=metrics_token,
                program_headers=header_names(rules),  # the same header rules name MCP requests' programs
            ),
            manager=ManagerConfig(namespace=namespace),
            server=ServerConfig(
                default_image=default_image,
                program_idle_timeout_s=idle_timeout,
                allow_bridge_network=allow_bridge_network,
            ),
            prepare_on_restore=prepare,
        )
    except ValidationError as exc:  # without input values: a token must never be echoed
        raise _fail("invalid configuration: " + "; ".join(_errors(exc)), 2) from None
    except ValueError as exc:  # a malformed --model-alias / --program-id-from (the message names only the flag)
        raise _fail(f"invalid configuration: {exc}", 2) from None
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config, generated, log_level))
    except (ThunderError, CombinedError) as exc:
        raise _fail(str(exc)) from None


async def _serve(config: CombinedConfig, generated_token: bool, log_level: str) -> None:
    from thunder_common.serving import serving

    from .app import open_combined

    http = config.http
    async with (
        open_combined(config) as combined,
        serving(combined.app, http.host, http.port, log_level=log_level) as running,
    ):
        url = running.url
        err.print(f"[bold green]thunder[/] serving on {url} (sandbox namespace '{config.manager.namespace}')")
        err.print(f'  OpenAI API  {url}/v1   program id: extra_body {{"program_id": ...}} or header X-Program-Id')
        err.print(f"  MCP         {url}/mcp  per program: {url}/p/<program_id>/mcp (bearer token)")
        err.print(f"  status      thunder status --url {url} --token <token>    metrics {url}/metrics (token)")
        if generated_token:
            err.print(f"  generated bearer token (shown once): {http.token}")
        err.print("  Claude Code: " + claude_command(f"{url}/mcp", http.token if generated_token else "<token>"))
        if http.host not in ("127.0.0.1", "localhost", "::1"):
            err.print(
                f"[yellow]  bound to {http.host}: /v1 and /health need no token; "
                "keep the port behind a firewall or a proxy that authenticates[/]"
            )
        unhealthy = [b.url for b in combined.scheduler.backends.backends.values() if not b.healthy]
        if unhealthy:
            err.print(f"[yellow]  backend(s) not answering yet: {', '.join(unhealthy)} (requests wait for them)[/]")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, running.task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        err.print("thunder: shutting down: ending every program and reclaiming its sandboxes")


@app.command()
def status(
    url: Annotated[str, typer.Option(envvar="THUNDER_URL", help="the server's base URL")] = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON document")] = False,
    disk: Annotated[bool, typer.Option(help="measure disk use per program (walks the engine's layers)")] = True,
    token: Annotated[
        str | None, typer.Option(envvar=TOKEN_ENV, show_envvar=True, help="the server's bearer token")
    ] = None,
) -> None:
    """Show the programs of a running `thunder serve`: phase, status, tokens, backend, sandboxes, disk."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/thunder/status", params={"disk": int(disk)}, headers=headers, timeout=30.0
        )
        if response.status_code in (401, 403):
            raise _fail(
                f"{url} refused the status ({response.status_code}): pass the server's token with --token "
                "or THUNDER_TOKEN"
            )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise _fail(f"cannot read the status of {url}: {exc} (is `thunder serve` running there?)") from None
    if as_json:
        print(json.dumps(response.json(), indent=2))
        return
    from .status import StatusReport

    render_status(Console(soft_wrap=True), StatusReport.model_validate(response.json()))


@app.command()
def demo(
    programs: Annotated[int | None, typer.Option(min=1, help="agent programs to run (default 10, quick 6)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="steps per program (default 6, quick 4)")] = None,
    quick: Annotated[bool, typer.Option(help="a small run (about a minute once vLLM is up)")] = False,
    backend: Annotated[str | None, typer.Option(help="vLLM base URL (default: start the CPU vLLM)")] = None,
    server: Annotated[
        str | None, typer.Option(help="use this running `thunder serve` instead of starting one in-process")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar=TOKEN_ENV, help="bearer token of --server")] = None,
    oversubscription: Annotated[float | None, typer.Option(help="target total context / KV pool")] = None,
    seed: Annotated[int, typer.Option(help="seed of the scripted tool calls and texts")] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    """Run N real agent programs (LLM via /v1, tools via MCP) and print a JSON summary as the last line."""
    # Imported here, not at module level: `serve` and `status` never load the CPU vLLM launcher.
    from thunder_sched.cpu_vllm.errors import CpuVllmError

    from .demo import DemoConfig, run_demo, run_local_demo

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    if server is not None and (token is None or backend is not None):
        raise _fail("--server needs --token (or THUNDER_TOKEN) and takes no --backend", 2)
    overrides: dict[str, object] = {"seed": seed}
    if steps is not None:
        overrides["steps"] = steps
    if oversubscription is not None:
        overrides["oversubscription"] = oversubscription
    if server is None:  # the template offered by the in-process server; a running one has 'base' at least
        overrides["template"] = "demo"
    else:
        overrides["template"] = "base"
    try:
        if quick:
            config = DemoConfig.quick(programs, **overrides)
        else:
            config = DemoConfig(programs=DemoConfig.programs if programs is None else programs, **overrides)  # type: ignore[arg-type]
    except CombinedError as exc:
        raise _fail(str(exc), 2) from None
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("agent steps", total=config.programs * config.steps)

        def on_step() -> None:
            progress.advance(task)

        def say(message: str) -> None:
            progress.console.print(f"[dim]thunder demo:[/] {message}")

        try:
            if server is not None:
                assert token is not None
                run = run_demo(server.rstrip("/"), token, config, say=say, on_step=on_step)
            else:
                run = run_local_demo(config, backend_url=backend, say=say, on_step=on_step)
            report = asyncio.run(_cancel_on_signals(run))
        except (ThunderError, CombinedError, CpuVllmError) as exc:
            raise _fail(str(exc)) from None
    for error in report.errors:
        err.print(f"[red]error[/] {error}")
    print(report.model_dump_json(), flush=True)
    if report.programs_completed != report.programs or report.leaked:
        raise typer.Exit(1)


async def _cancel_on_signals(work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; SIGINT / SIGTERM cancel it, so that its cleanup (program ends, the in-process server's
    shutdown, the vLLM it started) still runs instead of the process dying with sandboxes left behind."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        raise CombinedError("interrupted; everything the demo started was stopped and reclaimed") from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
