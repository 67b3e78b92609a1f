"""Where file tools may reach: the sandbox's workdir and a few extra roots (``/tmp`` by default).

The container is the isolation boundary; this is a second fence that keeps an agent's file tools in its
work area. A path is inside when its physical location -- every symlink resolved *in the sandbox*,
``..`` applied -- lies under the physical location of a root. The resolution and the stat of the target
happen in one exec, so each file call costs one exec plus the archive transfer.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from thunder_env import EnvManager, FileOperationError, InvalidSpecError, Lease
from thunder_env.files import resolve_path

from .errors import PathOutsideSandboxError

# $1: an absolute normalized path; $2...: roots. Prints "P\t<physical path>", then "S\t<kind>\t<mode>\t<size>"
# if it exists, then "R\t<physical root>" per root. The deepest existing ancestor is resolved with
# readlink -f (busybox and coreutils agree when the path exists); a dangling symlink is followed by hand.
_RESOLVE_SCRIPT = r"""
p=$1; shift; hops=0
while :; do
  d=$p; rest=
  while [ ! -e "$d" ] && [ ! -L "$d" ]; do rest="/${d##*/}$rest"; d=${d%/*}; [ -n "$d" ] || d=/; done
  if [ -L "$d" ] && [ ! -e "$d" ]; then
    t=$(readlink -- "$d"); case $t in /*) ;; *) t="${d%/*}/$t" ;; esac
    p="$t$rest"; hops=$((hops+1))
    [ $hops -le 16 ] || { echo "too many levels of symbolic links" >&2; exit 4; }
    continue
  fi
  r=$(readlink -f -- "$d") || { echo "cannot resolve $d" >&2; exit 3; }
  full="${r%/}$rest"; [ -n "$full" ] || full=/
  printf 'P\t%s\n' "$full"
  [ -e "$full" ] && stat -c 'S	%F	%a	%s' -- "$full"
  break
done
for root in "$@"; do
  r=$(readlink -f -- "$root" 2>/dev/null) || r=$root
  printf 'R\t%s\n' "$r"
done
"""

FileKind = Literal["file", "dir", "other"]
_KINDS: dict[str, FileKind] = {"regular file": "file", "regular empty file": "file", "directory": "dir"}


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    requested: str
    path: str  # physical, absolute
    kind: FileKind | None  # None: does not exist
    mode: int | None
    size: int | None

    @property
    def exists(self) -> bool:
        return self.kind is not None


def file_roots(workdir: str, extra_roots: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((workdir, *extra_roots)))


def is_under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


async def resolve_in_sandbox(
    manager: EnvManager, lease: Lease, path: str, extra_roots: tuple[str, ...], tool: str
) -> ResolvedPath:
    """Resolve ``path`` in the sandbox and check that it stays in the file area."""
    if "\n" in path or "\r" in path:
        raise InvalidSpecError(f"invalid path {path!r}: line breaks are not allowed")
    workdir = manager.sandbox_spec(lease).workdir
    lexical = resolve_path(workdir, path)  # absolute, '..' applied; rejects empty and NUL
    roots = file_roots(workdir, extra_roots)
    result = await manager.exec(
        lease,
        ["/bin/sh", "-c", _RESOLVE_SCRIPT, "resolve", lexical, *roots],
        timeout_s=30.0,
        output_limit=1 << 16,
        tool=tool,
    )
    if result.exit_code != 0:
        raise FileOperationError(path, result.stderr.text.strip() or f"cannot resolve (exit {result.exit_code})")
    physical, kind, mode, size = "", None, None, None
    physical_roots: list[str] = []
    for line in result.stdout.text.splitlines():
        tag, _, value = line.partition("\t")
        if tag == "P":
            physical = posixpath.normpath(value) if value != "/" else "/"
        elif tag == "S":
            fields = value.split("\t")
            if len(fields) == 3:
                kind = _KINDS.get(fields[0], "other")
                mode, size = int(fields[1], 8), int(fields[2])
        elif tag == "R":
            physical_roots.append(value or "/")
    if not physical:
        raise FileOperationError(path, "the sandbox did not report where this path leads")
    if not any(is_under(physical, root) for root in physical_roots):
        raise PathOutsideSandboxError(path, physical, roots)
    return ResolvedPath(path, physical, kind, mode, size)
