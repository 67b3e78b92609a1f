"""`thunder-sched`: run the scheduler proxy in front of one or more vLLM servers."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.program_ids import parse_program_id_rules


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thunder-sched",
        description="Program-aware OpenAI-compatible proxy that pauses and restores agent programs "
        "so the vLLM KV pool never thrashes.",
    )
    p.add_argument(
        "--backend",
        action="append",
        required=True,
        metavar="URL",
        help="vLLM base URL (repeat for replicas), e.g. http://127.0.0.1:8000",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8300)
    pol = PolicyConfig.model_fields
    p.add_argument("--lambda-max", type=float, default=pol["lambda_max"].default)
    p.add_argument("--lambda-min", type=float, default=None, help="low watermark (default: lambda-max)")
    p.add_argument("--tau", type=float, default=pol["tau_s"].default, help="acting-token decay constant, s")
    p.add_argument("--no-time-decay", action="store_true", help="count acting programs' tokens in full")
    p.add_argument("--aging-rate", type=float, default=pol["aging_rate"].default)
    p.add_argument(
        "--max-step-wait",
        "--max-wait",
        dest="max_wait",
        type=float,
        default=pol["max_wait_s"].default,
        help="latency objective: a ready program waiting this long is served first, with room reserved and "
        "idle programs preempted for it (seconds)",
    )
    p.add_argument(
        "--min-running",
        type=int,
        default=pol["min_running"].default,
        help="work conservation: while fewer requests run on a backend, the next ready program is restored there "
        "even past the memory limit (0: memory admission only)",
    )
    p.add_argument("--no-tool-aware", action="store_true", help="ignore tool events' durations (paper's policy)")
    p.add_argument(
        "--tool-pause",
        type=float,
        default=pol["tool_pause_s"].default,
        help="a running tool expected to need more than this many more seconds gives up its KV room, s",
    )
    p.add_argument(
        "--host-tier-tokens",
        action="append",
        default=[],
        metavar="URL=TOKENS",
        help="host KV tier size of a backend, when its /metrics does not report it (repeatable)",
    )
    p.add_argument(
        "--model-alias",
        action="append",
        default=[],
        metavar="NAME=SERVED",
        help="serve requests for model NAME with the backend's model SERVED (repeatable; NAME '*' matches every "
        "name not listed), e.g. for Claude Code's Claude model names",
    )
    p.add_argument(
        "--forward-auth",
        action="store_true",
        help="forward clients' Authorization / x-api-key headers to the backends (default: never)",
    )
    p.add_argument(
        "--program-id-from",
        action="append",
        default=[],
        metavar="RULE",
        help="where a request that names no program (body program_id, X-Program-Id) finds one: 'header:NAME' or "
        "'user-id:REGEX' (on the body's metadata.user_id); repeatable, first match wins; replaces the default "
        "(Claude Code's session id: header:X-Claude-Code-Session-Id, then its metadata.user_id; then "
        "header:X-OpenHands-ServerConversation-ID); 'none': no rule",
    )
    p.add_argument("--cache-affinity", type=float, default=pol["cache_affinity_s"].default)
    cfg = SchedulerConfig.model_fields
    p.add_argument("--interval", type=float, default=cfg["interval_s"].default, help="check period, s")
    p.add_argument("--backend-refresh", type=float, default=cfg["backend_refresh_s"].default)
    p.add_argument("--inactivity-timeout", type=float, default=cfg["inactivity_timeout_s"].default)
    p.add_argument(
        "--env-manager-url",
        default=None,
        help="POST here when a program ends ('{program_id}' substituted, else /programs/<id>/end)",
    )
    p.add_argument(
        "--env-manager-token",
        default=None,
        help="bearer token for --env-manager-url (default: $THUNDER_ENV_MANAGER_TOKEN; thunder-mcp's "
        "--notifier-token or server token)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> SchedulerConfig:
    policy = PolicyConfig(
        lambda_max=args.lambda_max,
        lambda_min=args.lambda_min,
        tau_s=args.tau,
        time_decay=not args.no_time_decay,
        aging_rate=args.aging_rate,
        max_wait_s=args.max_wait,
        cache_affinity_s=args.cache_affinity,
        tool_aware=not args.no_tool_aware,
        tool_pause_s=args.tool_pause,
        min_running=args.min_running,
    )
    return SchedulerConfig(
        backends=tuple(args.backend),
        policy=policy,
        interval_s=args.interval,
        backend_refresh_s=args.backend_refresh,
        inactivity_timeout_s=args.inactivity_timeout,
        env_manager_url=args.env_manager_url,
        env_manager_token=args.env_manager_token or os.environ.get("THUNDER_ENV_MANAGER_TOKEN") or None,
        host_tier_tokens=_tiers(args.host_tier_tokens),
        model_aliases=parse_model_aliases(args.model_alias),
        forward_auth=args.forward_auth,
        program_id_rules=parse_program_id_rules(args.program_id_from),
    )


def parse_model_aliases(items: list[str]) -> dict[str, str]:
    """`NAME=SERVED` items (the --model-alias flags) as a dict; a name given twice is an error."""
    aliases: dict[str, str] = {}
    for item in items:
        name, sep, served = item.partition("=")
        if not sep or not name.strip() or not served.strip():
            raise ValueError(f"--model-alias wants NAME=SERVED, got {item!r}")
        if name in aliases:
            raise ValueError(f"--model-alias names {name!r} twice")
        aliases[name] = served
    return aliases


def _tiers(items: list[str]) -> dict[str, int]:
    tiers = {}
    for item in items:
        url, sep, tokens = item.rpartition("=")
        if not sep or not tokens.isdigit():
            raise ValueError(f"--host-tier-tokens wants URL=TOKENS, got {item!r}")
        tiers[url] = int(tokens)
    return tiers


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValidationError, ValueError) as exc:
        sys.exit(f"thunder-sched: invalid configuration:\n{exc}")
    import uvicorn  # imported here: only the entry point needs the server

    from thunder_sched.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
