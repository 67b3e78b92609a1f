"""``thunder-images`` / ``python -m thunder_env.images``: build the sandbox images, show their state.

Exit codes: 0 success (``status``: every image present), 1 error, 2 bad usage,
3 (``status`` only) some image stale, missing or unknown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiodocker

from thunder_env.errors import BackendUnavailableError, ThunderError
from thunder_env.images.builder import BuildOptions, ensure_images, image_status

EXIT_NOT_CURRENT = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thunder-images", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show the output of build tools")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--only", action="append", metavar="NAME", help="only this recipe (repeatable); default all")
    common.add_argument(
        "--recipes", type=Path, metavar="DIR", help="recipes folder (default: images/ of this checkout)"
    )
    common.add_argument("--mirror", help="Debian mirror URL (default: read from the apt sources)")
    common.add_argument("--suite", help="Debian suite (default: the recipe's, else the apt sources')")
    common.add_argument("--busybox", type=Path, help="static busybox binary (default: busybox on PATH)")
    build = sub.add_parser("build", parents=[common], help="build images whose recipe changed")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument(
        "--work-dir",
        type=Path,
        default=BuildOptions.work_dir,
        help=f"scratch space for root filesystems (default {BuildOptions.work_dir})",
    )
    build.add_argument("--no-deb-cache", action="store_true", help="do not keep downloaded .debs")
    sub.add_parser("status", parents=[common], help="print each image: present, stale or missing")
    return p


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def _docker() -> aiodocker.Docker:
    try:
        return aiodocker.Docker()
    except (ValueError, aiodocker.DockerError) as exc:  # no socket found, bad DOCKER_HOST
        raise BackendUnavailableError(
            f"no Docker Engine to talk to ({exc}); run scripts/ensure-system.sh as root or set DOCKER_HOST"
        ) from exc


async def _build(args: argparse.Namespace, options: BuildOptions) -> int:
    async with _docker() as docker:
        results = await ensure_images(docker, args.only, args.force, recipes=args.recipes, options=options)
    for r in results:
        what = "built" if r.action == "built" else "up to date"
        print(f"{r.name:<10} {what:<10} {r.tag:<24} {_mb(r.size_bytes):>9}  {r.seconds:6.1f} s  {r.image_id[:19]}")
    return 0


async def _status(args: argparse.Namespace, options: BuildOptions) -> int:
    async with _docker() as docker:
        statuses = await image_status(docker, args.only, recipes=args.recipes, options=options)
    for s in statuses:
        line = f"{s.name:<10} {s.state:<8} {s.tag:<24} {_mb(s.size_bytes):>9}"
        if s.image_id:
            line += f"  {s.image_id[:19]}"
        print(line)
        if s.detail:
            print(f"    {s.detail}")
    return 0 if all(s.state == "present" for s in statuses) else EXIT_NOT_CURRENT


async def _cancel_on_sigterm(work: Coroutine[Any, Any, int]) -> int:
    """SIGTERM (a CI time limit, `timeout`, `kill`) cancels the work like Ctrl-C does, so a build
    stops its debootstrap and removes its scratch tree instead of dying mid-way."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    terminated: list[bool] = []

    def on_sigterm() -> None:
        terminated.append(True)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await task
    except asyncio.CancelledError:
        if terminated:
            print("terminated; partial work was cleaned up", file=sys.stderr)
            return 128 + signal.SIGTERM
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    # Our own progress only: aiohttp/asyncio debug chatter is not for this command's user.
    for noisy in ("asyncio", "aiohttp", "aiodocker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = BuildOptions(
        work_dir=getattr(args, "work_dir", BuildOptions.work_dir),
        busybox=args.busybox,
        mirror=args.mirror,
        suite=args.suite,
        cache_debs=not getattr(args, "no_deb_cache", False),
    )
    command = _build if args.command == "build" else _status
    try:
        return asyncio.run(_cancel_on_sigterm(command(args, options)))
    except ThunderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except aiodocker.DockerError as exc:
        print(f"error: the Docker Engine refused: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; partial work was cleaned up", file=sys.stderr)
        return 130
