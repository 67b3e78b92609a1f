"""Stream a finished root filesystem tree into `docker import` through GNU tar, no temp file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiodocker

from thunder_env.images.engine import import_rootfs, remove_image
from thunder_env.images.errors import ImageBuildError, ToolMissingError
from thunder_env.images.procs import stop_group

_CHUNK = 1 << 20


def tar_argv(root: Path) -> list[str]:
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={root}",
        "--numeric-owner",  # ids as in the tree; names would be looked up on the host
        "--xattrs",
        "--xattrs-include=*",  # file capabilities live in security.* attributes
        "--one-file-system",  # never archive a mount left inside the tree
        "--sort=name",
        # The engine provides these at run time; keep the folders, not the host's device nodes.
        "--exclude=./dev/*",
        "--exclude=./proc/*",
        "--exclude=./sys/*",
        ".",
    ]


async def import_tree(docker: aiodocker.Docker, recipe_name: str, root: Path, changes: Sequence[str]) -> str:
    """`tar` the tree at ``root`` into an untagged image; returns its id."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *tar_argv(root),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError("tar", "tar") from exc
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    errors = asyncio.create_task(stderr.read())

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await stdout.read(_CHUNK):
            yield chunk

    image_id = ""
    try:
        image_id = await import_rootfs(docker, recipe_name, chunks(), changes)
        returncode = await proc.wait()
        err = (await errors).decode(errors="replace").splitlines()
        if returncode != 0:
            # A tar that died mid-way may still have produced an importable, truncated archive.
            raise ImageBuildError(recipe_name, "tar", f"exit code {returncode}", err[-20:])
    except BaseException:
        await asyncio.shield(stop_group(proc))
        errors.cancel()
        with contextlib.suppress(BaseException):
            await errors
        if image_id:
            await asyncio.shield(remove_image(docker, image_id))
        raise
    return image_id
