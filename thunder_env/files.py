"""File operations on any backend, built from its archive and exec primitives."""

from __future__ import annotations

import io
import posixpath
import secrets
import tarfile
import time

from .backend import ExecRequest, SandboxOperations
from .errors import FileOperationError, FileTooLargeError, InvalidSpecError
from .results import FileEntry

MAX_SYMLINK_HOPS = 8
_KINDS = {"regular file": "file", "regular empty file": "file", "directory": "dir", "symbolic link": "symlink"}


def resolve_path(workdir: str, path: str) -> str:
    """An absolute, normalized path inside the sandbox; relative paths start at the workdir.

    The engine resolves paths inside the container's root, so ``..`` can never reach the host.
    """
    if not path or "\0" in path:
        raise InvalidSpecError(f"invalid path {path!r}")
    joined = path if path.startswith("/") else posixpath.join(workdir, path)
    return posixpath.normpath(joined).replace("//", "/")


async def read_file(
    ops: SandboxOperations, sandbox_id: str, path: str, offset: int = 0, length: int | None = None,
    max_bytes: int = 64 << 20,
) -> bytes:
    if offset < 0 or (length is not None and length < 0):
        raise InvalidSpecError("offset and length must not be negative")
    for _ in range(MAX_SYMLINK_HOPS):
        member, data = await _fetch_single(ops, sandbox_id, path, max_bytes)
        if member.issym():
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
            continue
        if member.isdir():
            raise FileOperationError(path, "is a directory; list it instead of reading it")
        if not member.isfile():
            raise FileOperationError(path, "is not a regular file")
        end = None if length is None else offset + length
        return data[offset:end]
    raise FileOperationError(path, f"too many levels of symbolic links (>{MAX_SYMLINK_HOPS})")


async def write_file(
    ops: SandboxOperations, sandbox_id: str, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> None:
    if path == "/" or path.endswith("/"):
        raise FileOperationError(path, "is a directory path; give a file name")
    parent, name = posixpath.split(path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # The file alone: a directory entry would reset the mode and owner of an existing parent
        # (/tmp would lose its 1777, a user's workdir would become root's).
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, time.time(), uid, gid
        tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    try:
        await ops.put_archive(sandbox_id, parent, archive)
    except FileOperationError:
        # Usually a missing parent: mkdir -p creates it and leaves existing ones alone; then retry once.
        mkdir = await ops.exec(
            sandbox_id, ExecRequest(argv=["mkdir", "-p", "--", parent], marker="mkdir-" + secrets.token_hex(6))
        )
        if mkdir.exit_code != 0:
            raise FileOperationError(parent, mkdir.stderr.text.strip() or "cannot create the directory") from None
        await ops.put_archive(sandbox_id, parent, archive)


async def list_dir(ops: SandboxOperations, sandbox_id: str, path: str, user: str = "") -> list[FileEntry]:
    # find + stat exist in busybox and coreutils alike; NUL-free tab-separated lines, one per entry.
    script = (
        'if [ ! -e "$1" ]; then echo "no such file or directory" >&2; exit 2; fi; '
        'if [ ! -d "$1" ]; then echo "not a directory" >&2; exit 3; fi; '
        "find \"$1\" -mindepth 1 -maxdepth 1 -exec stat -c '%F\t%s\t%Y\t%n' {} +"
    )
    result = await ops.exec(
        sandbox_id,
        ExecRequest(argv=["/bin/sh", "-c", script, "ls", path], marker="ls-" + secrets.token_hex(6), user=user),
    )
    if result.exit_code != 0:
        raise FileOperationError(path, result.stderr.text.strip() or f"listing failed ({result.exit_code})")
    entries = []
    for line in result.stdout.text.splitlines():
        fields = line.split("\t", 3)
        if len(fields) != 4:
            continue
        kind, size, mtime, full = fields
        entries.append(
            FileEntry(
                name=posixpath.basename(full), path=full, kind=_KINDS.get(kind, "other"),  # type: ignore[arg-type]
                size=int(size), mtime=float(mtime),
            )
        )
    return sorted(entries, key=lambda e: e.name)


async def _fetch_single(
    ops: SandboxOperations, sandbox_id: str, path: str, max_bytes: int
) -> tuple[tarfile.TarInfo, bytes]:
    # Bounded: a huge (or sparse) file is refused from its size, or once the stream passes the limit,
    # never loaded whole into this process.
    archive = await ops.get_archive(sandbox_id, path, max_bytes)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        member = tar.next()
        if member is None:
            raise FileOperationError(path, "the engine returned an empty archive")
        if member.isfile():
            if member.size > max_bytes:
                raise FileTooLargeError(path, max_bytes, member.size)
            extracted = tar.extractfile(member)
            return member, extracted.read() if extracted else b""
        return member, b""
