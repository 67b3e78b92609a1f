"""The ``busybox`` builder: a root filesystem of one static busybox binary and its applet links."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from thunder_env.images.errors import ToolMissingError
from thunder_env.images.hashing import file_sha256
from thunder_env.images.recipes import BusyboxRecipe, UserSpec
from thunder_env.images.tarball import TarWriter

_PACKAGE = "busybox-static"
_PT_INTERP = 3


def find_busybox(explicit: Path | None = None) -> Path:
    """The busybox binary to copy: ``explicit``, else the one on PATH, else /bin/busybox."""
    if explicit is not None:
        path = explicit
    else:
        found = shutil.which("busybox")
        path = Path(found) if found else Path("/bin/busybox")
    if not path.is_file():
        raise ToolMissingError("busybox", _PACKAGE, f"{path} not found")
    return path


def check_static_elf(data: bytes, path: str = "busybox") -> None:
    """Refuse a dynamically linked busybox: the image has no C library for it to load."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ToolMissingError("busybox", _PACKAGE, f"{path} is not an ELF executable")
    end = "<" if data[5] == 1 else ">"
    try:
        if data[4] == 2:  # 64-bit
            (phoff,) = struct.unpack_from(end + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
        else:
            (phoff,) = struct.unpack_from(end + "I", data, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
        types = [struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    except struct.error as exc:
        raise ToolMissingError("busybox", _PACKAGE, f"{path} is a truncated ELF file") from exc
    if _PT_INTERP in types:
        raise ToolMissingError(
            "busybox",
            _PACKAGE,
            f"{path} is dynamically linked; the image has no C library, so it needs the static build",
        )


def _account_files(user: UserSpec) -> tuple[bytes, bytes]:
    passwd = (
        "root:x:0:0:root:/root:/bin/sh\n"
        f"{user.name}:x:{user.uid}:{user.gid}:{user.name}:{user.home}:{user.shell}\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    group = f"root:x:0:\n{user.name}:x:{user.gid}:\nnogroup:x:65534:\n"
    return passwd.encode(), group.encode()


def busybox_rootfs(busybox: bytes, applets: Iterable[str], recipe: BusyboxRecipe) -> bytes:
    """The image's root filesystem as a deterministic tar archive. Pure: no I/O."""
    user = recipe.user
    # (mode, uid, gid) per directory; parents are filled in below.
    dirs: dict[str, tuple[int, int, int]] = {
        "bin": (0o755, 0, 0),
        "dev": (0o755, 0, 0),
        "etc": (0o755, 0, 0),
        "proc": (0o555, 0, 0),
        "root": (0o700, 0, 0),
        "run": (0o755, 0, 0),
        "sys": (0o555, 0, 0),
        "tmp": (0o1777, 0, 0),
        "usr": (0o755, 0, 0),
        "usr/local/bin": (0o755, 0, 0),
        "var/tmp": (0o1777, 0, 0),
    }
    # The home and the work folder belong to the unprivileged user so it can work there.
    dirs[user.home.strip("/")] = (0o755, user.uid, user.gid)
    dirs[recipe.image.workdir.strip("/")] = (0o755, user.uid, user.gid)
    for name in list(dirs):
        for parent in PurePosixPath(name).parents:
            if str(parent) != ".":
                dirs.setdefault(str(parent), (0o755, 0, 0))

    tar = TarWriter()
    for name in sorted(dirs, key=lambda n: (n.count("/"), n)):
        tar.directory(name, *dirs[name])
    # Merged layout: every applet lives in /bin, reachable through the usual paths too.
    tar.symlink("sbin", "bin")
    tar.symlink("usr/bin", "../bin")
    tar.symlink("usr/sbin", "../bin")
    tar.file("bin/busybox", busybox, mode=0o755)
    for applet in sorted(set(applets)):
        if not applet or "/" in applet or applet in (".", "..", "busybox"):
            continue
        tar.symlink(f"bin/{applet}", "busybox")
    passwd, group = _account_files(user)
    tar.file("etc/passwd", passwd)
    tar.file("etc/group", group)
    return tar.finish()


async def list_applets(busybox: Path) -> list[str]:
    """The applets compiled into ``busybox`` (``busybox --list``)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(busybox),
            "--list",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise ToolMissingError("busybox", _PACKAGE, f"cannot run {busybox}: {exc}") from exc
    out, err = await proc.communicate()
    applets = out.decode(errors="replace").split()
    if proc.returncode != 0 or "sh" not in applets:
        raise ToolMissingError(
            "busybox", _PACKAGE, f"`{busybox} --list` failed or lacks sh: {err.decode(errors='replace')}"
        )
    return applets


async def busybox_params(busybox: Path) -> dict[str, str]:
    """Build parameters for the recipe hash: the binary copied into the image."""
    return {"kind": "busybox", "busybox_sha256": await asyncio.to_thread(file_sha256, busybox)}


async def build_busybox_rootfs(recipe: BusyboxRecipe, busybox: Path) -> bytes:
    """Read and check the binary, list its applets and return the rootfs tar."""
    data = await asyncio.to_thread(busybox.read_bytes)
    check_static_elf(data, str(busybox))
    applets = await list_applets(busybox)
    return await asyncio.to_thread(busybox_rootfs, data, applets, recipe)
