"""The ``debootstrap`` builder's second half: make a fresh Debian tree into a sandbox image.

Runs as root on a tree whose symlinks may be absolute (pointing at the *host* when followed from
outside), so every path is checked to resolve inside the tree before anything is written or deleted.
All functions here are blocking: call them from a thread.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from thunder_env.images.errors import ImageBuildError
from thunder_env.images.recipes import DebootstrapRecipe, UserSpec

# Documentation goes, licences stay.
KEEP = ("usr/share/doc/*/copyright",)


class _Tree:
    def __init__(self, root: Path, recipe_name: str) -> None:
        self.root = root
        self.real = os.path.realpath(root)
        self.recipe_name = recipe_name

    def inside(self, rel: str) -> Path:
        """``root/rel``, provided its parent resolves inside the tree and it is no symlink."""
        path = self.root / rel.strip("/")
        parent = os.path.realpath(path.parent)
        if not (parent == self.real or parent.startswith(self.real + "/")) or path.is_symlink():
            raise ImageBuildError(self.recipe_name, "finishing", f"{rel} escapes the root filesystem")
        return path

    def replace(self, rel: str, content: str) -> None:
        """Write ``rel`` anew; a symlink there is replaced, never followed."""
        path = self.root / rel.strip("/")
        if path.is_symlink():
            path.unlink()
        self.inside(rel).write_text(content)

    def contains(self, path: Path) -> bool:
        parent = os.path.realpath(path.parent)
        return parent == self.real or parent.startswith(self.real + "/")


def _kept(rel: str) -> bool:
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in KEEP)


def _prune_one(tree: _Tree, path: Path) -> None:
    rel = path.relative_to(tree.root).as_posix()
    if path.is_symlink() or not path.is_dir():
        if not _kept(rel):
            path.unlink()
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            if not _kept((base / name).relative_to(tree.root).as_posix()):
                (base / name).unlink()
        if base != path and not any(base.iterdir()):
            base.rmdir()
    if not any(path.iterdir()):
        path.rmdir()


def prune(root: Path, patterns: list[str], recipe_name: str = "") -> None:
    """Delete what ``patterns`` (globs relative to ``root``) match, except licence files."""
    tree = _Tree(root, recipe_name)
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if tree.contains(path):
                _prune_one(tree, path)


def add_user(root: Path, user: UserSpec, workdir: str, recipe_name: str = "") -> None:
    """Add the unprivileged user (files edited directly: no chroot, no host tools involved)."""
    tree = _Tree(root, recipe_name)
    # Every path is checked before anything is written.
    passwd = tree.inside("etc/passwd")
    home, skel, work = tree.inside(user.home), tree.inside("etc/skel"), tree.inside(workdir)
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user.name or (len(fields) > 2 and fields[2] == str(user.uid)):
            raise ImageBuildError(recipe_name, "finishing", f"user {user.name}/{user.uid} already exists")
    entries = {
        "etc/passwd": f"{user.name}:x:{user.uid}:{user.gid}:{user.name}:{user.home}:{user.shell}\n",
        "etc/group": f"{user.name}:x:{user.gid}:\n",
        # Locked password, no ageing (an empty last-change field disables it).
        "etc/shadow": f"{user.name}:!::0:99999:7:::\n",
        "etc/gshadow": f"{user.name}:!::\n",
    }
    for rel, entry in entries.items():
        path = tree.inside(rel)
        if path.exists():
            with path.open("a") as f:
                f.write(entry)
    if skel.is_dir():
        shutil.copytree(skel, home, symlinks=True, dirs_exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for path in [work, home, *home.rglob("*")]:
        os.lchown(path, user.uid, user.gid)
    home.chmod(0o755)
    work.chmod(0o755)


def write_config(root: Path, recipe: DebootstrapRecipe, recipe_name: str = "") -> None:
    """Host details out (debootstrap copies resolv.conf and hostname in), slim dpkg config in."""
    tree = _Tree(root, recipe_name)
    # The engine bind-mounts its own files over these at run time.
    tree.replace("etc/resolv.conf", "")
    tree.replace("etc/hostname", "localhost\n")
    if (root / "etc/machine-id").exists():
        tree.replace("etc/machine-id", "")
    if recipe.dpkg_config:
        cfg_dir = tree.inside("etc/dpkg/dpkg.cfg.d")
        cfg_dir.mkdir(parents=True, exist_ok=True)
        tree.replace("etc/dpkg/dpkg.cfg.d/thunder-slim", "\n".join(recipe.dpkg_config) + "\n")


def finish_tree(root: Path, recipe: DebootstrapRecipe, recipe_name: str) -> None:
    prune(root, recipe.prune, recipe_name)
    write_config(root, recipe, recipe_name)
    add_user(root, recipe.user, recipe.image.workdir, recipe_name)
