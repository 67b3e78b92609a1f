"""A deterministic tar writer: fixed mtimes, numeric owners, no user names, entries in call order.

The same inputs give byte-identical archives, so a rebuilt image has the same layer digest.
"""

from __future__ import annotations

import io
import tarfile

# 2000-01-01T00:00:00Z: a fixed, obviously synthetic timestamp (0 upsets some tools).
FIXED_MTIME = 946_684_800


class TarWriter:
    """Build a tar archive in memory. Parent directories must be added before their children."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)
        self._names: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"bad or duplicate tar entry {name!r}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            raise ValueError(f"tar entry {name!r} added before its directory {parent!r}")
        self._names.add(name)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = FIXED_MTIME
        return info

    def directory(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777, 0, 0)
        info.linkname = target
        self._tar.addfile(info)

    def finish(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()
