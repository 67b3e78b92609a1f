"""The recipe hash: what decides whether an existing image is still up to date.

It covers the recipe folder's files and the build parameters (suite, architecture, builder code,
input binaries), never what a mirror happens to serve: the same recipe on the same suite is the
same image, and an image is rebuilt only when its inputs change (or on ``--force``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

_FORMAT = b"thunder-recipe-hash/1\0"


def _recipe_files(directory: Path) -> list[Path]:
    # Hidden files (editor swap files, .DS_Store) and caches must not force a rebuild.
    files = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_symlink() or path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def recipe_hash(directory: Path, params: Mapping[str, str]) -> str:
    """sha256 hex digest of the recipe folder's files and ``params``. Blocking: run in a thread."""
    h = hashlib.sha256(_FORMAT)

    def put(data: bytes) -> None:
        # Length-prefixed so that no two different inputs produce the same byte stream.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    for path in _recipe_files(directory):
        put(path.relative_to(directory).as_posix().encode())
        if path.is_symlink():
            put(b"symlink:" + str(path.readlink()).encode())
        else:
            put(b"exec" if path.stat().st_mode & 0o111 else b"file")
            put(path.read_bytes())
    put(json.dumps(dict(params), sort_keys=True).encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """Digest of a build input such as a binary or a builder module. Blocking: run in a thread."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
