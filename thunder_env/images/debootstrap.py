"""The ``debootstrap`` builder's first half: choose mirror and suite, run debootstrap, clean up.

debootstrap mounts /proc and /sys inside its target while it installs packages. A killed run can
leave those mounts behind, and deleting the tree then would reach into the host's /proc and /sys,
so every removal here unmounts first and refuses to delete anything still mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import shutil
import signal
from pathlib import Path

from thunder_env.images import procs
from thunder_env.images.apt_sources import (
    DebianSource,
    choose_debian_source,
    read_apt_sources,
    read_os_codename,
)
from thunder_env.images.errors import ImageBuildError, RootRequiredError, ToolMissingError
from thunder_env.images.recipes import DebootstrapRecipe

log = logging.getLogger(__name__)

_SCRIPTS_DIR = Path("/usr/share/debootstrap/scripts")
_MACHINE_TO_DEB = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "armhf",
    "i686": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def debootstrap_binary() -> Path:
    # /usr/sbin is not on every PATH (non-login shells of non-root users).
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if not found:
        raise ToolMissingError("debootstrap", "debootstrap", "not found on PATH nor in /usr/sbin")
    return Path(found)


def known_suites(scripts_dir: Path = _SCRIPTS_DIR) -> set[str]:
    """The suites this debootstrap has a script for. Blocking: run in a thread."""
    try:
        return {p.name for p in scripts_dir.iterdir()}
    except OSError:
        return set()


def resolve_source(recipe: DebootstrapRecipe, mirror: str | None, suite: str | None) -> DebianSource:
    """Mirror and suite: explicit values first, then the recipe's suite, then the apt sources.

    Blocking file I/O (the apt configuration): run in a thread.
    """
    suite = suite or recipe.suite or None
    if mirror and suite:
        return DebianSource(mirror.rstrip("/"), suite, None, "command line")
    chosen = choose_debian_source(
        read_apt_sources(),
        codename=suite or read_os_codename(),
        known_suites=known_suites(),
        components=recipe.components,
    )
    if suite and chosen.suite != suite:
        chosen = DebianSource(chosen.mirror, suite, chosen.keyring, f"mirror from {chosen.origin}")
    if mirror:
        chosen = DebianSource(mirror.rstrip("/"), chosen.suite, None, "command line")
    return chosen


async def host_arch() -> str:
    """The host's Debian architecture name (dpkg's answer when dpkg is there)."""
    try:
        result = await procs.run(["dpkg", "--print-architecture"], keep_output=True)
        if result.returncode == 0 and result.output.strip():
            return result.output.strip()
    except OSError:
        pass
    machine = platform.machine()
    return _MACHINE_TO_DEB.get(machine, machine)


def debootstrap_params(source: DebianSource, arch: str) -> dict[str, str]:
    """Build parameters for the recipe hash. The mirror is where packages come from, not what
    they are, so it is left out."""
    return {"kind": "debootstrap", "suite": source.suite, "arch": arch}


def check_can_run(recipe_name: str, source: DebianSource) -> Path:
    """The debootstrap binary, after checking that a run can succeed here. Blocking (stat, listdir)."""
    binary = debootstrap_binary()
    if os.geteuid() != 0:
        raise RootRequiredError("debootstrap")
    suites = known_suites()
    if suites and source.suite not in suites:
        raise ImageBuildError(
            recipe_name,
            "debootstrap",
            f"this debootstrap knows no suite {source.suite!r} (from {source.origin}); fix --suite or "
            "the apt sources, or upgrade debootstrap (`apt-get install debootstrap`) for a newer release",
        )
    return binary


async def run_debootstrap(
    recipe_name: str,
    recipe: DebootstrapRecipe,
    source: DebianSource,
    arch: str,
    target: Path,
    cache_dir: Path | None,
    time_limit_s: float | None,
) -> None:
    """debootstrap into ``target`` (an empty folder), as an asyncio subprocess."""
    binary = await asyncio.to_thread(check_can_run, recipe_name, source)
    argv = [str(binary), f"--variant={recipe.variant}", f"--arch={arch}"]
    argv.append(f"--components={','.join(recipe.components)}")
    if recipe.include:
        argv.append(f"--include={','.join(recipe.include)}")
    if source.keyring and await asyncio.to_thread(os.path.isfile, source.keyring):
        argv.append(f"--keyring={source.keyring}")
    if cache_dir is not None:
        await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
        argv.append(f"--cache-dir={await asyncio.to_thread(cache_dir.resolve)}")
    argv += [source.suite, str(target), source.mirror]
    log.info("%s: debootstrap %s from %s (%s)", recipe_name, source.suite, source.mirror, source.origin)
    try:
        async with asyncio.timeout(time_limit_s):
            result = await procs.run(argv, on_line=lambda line: log.debug("debootstrap: %s", line))
    except TimeoutError as exc:
        raise ImageBuildError(recipe_name, "debootstrap", f"no result after {time_limit_s} s") from exc
    if result.returncode != 0:
        raise ImageBuildError(
            recipe_name,
            "debootstrap",
            f"exit code {result.returncode} (mirror {source.mirror}, suite {source.suite}, from {source.origin})",
            result.tail,
        )


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points at or below ``path``, deepest first. Blocking: run in a thread."""
    root = os.path.realpath(path)
    found = []
    for line in mountinfo.read_text().splitlines():
        parts = line.split()
        if len(parts) > 4:
            point = _unescape_mountinfo(parts[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


async def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below ``path``, then delete it. Never crosses into a mount."""
    if not await asyncio.to_thread(os.path.lexists, path):
        return
    for point in await asyncio.to_thread(mounts_under, path):
        await procs.run(["umount", "--lazy", point])
    left = await asyncio.to_thread(mounts_under, path)
    if left:
        raise ImageBuildError(
            path.name, "cleanup", f"refusing to delete {path}: still mounted: {', '.join(left)}; unmount them"
        )
    await asyncio.to_thread(shutil.rmtree, path)


def processes_using(path: Path, proc_dir: Path = Path("/proc")) -> list[int]:
    """Processes chrooted into ``path`` or naming it on their command line (an orphaned
    debootstrap and its dpkg children). Blocking: run in a thread."""
    root = os.path.realpath(path)
    me = os.getpid()
    found = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            chroot = os.readlink(entry / "root")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        inside = chroot == root or chroot.startswith(root + "/")
        if inside or any(a == root.encode() or a.startswith(root.encode() + b"/") for a in argv):
            found.append(int(entry.name))
    return found


async def remove_stale_trees(work_dir: Path, prefix: str) -> None:
    """Delete trees a crashed earlier build left behind (call while holding the recipe's lock).

    A build killed with SIGKILL leaves its debootstrap running on its own; it is stopped first
    so that nothing writes into (or mounts under) a tree being deleted.
    """
    stale = await asyncio.to_thread(lambda: sorted(work_dir.glob(prefix + "*")))
    for path in stale:
        log.info("removing %s left by an interrupted build", path)
        for _ in range(20):
            pids = await asyncio.to_thread(processes_using, path)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.1)
        await remove_tree(path)


def trim_deb_cache(cache_dir: Path, target: Path) -> int:
    """Keep only the .debs the build just used (debootstrap leaves them in the target's apt
    archive), so the cache never grows past one build's worth. Blocking: run in a thread."""
    used = {p.name for p in (target / "var/cache/apt/archives").glob("*.deb")}
    removed = 0
    for deb in cache_dir.glob("*.deb"):
        if used and deb.name not in used:
            deb.unlink()
            removed += 1
    return removed
