"""Read the machine's apt sources to find the Debian mirror and suite debootstrap should use.

Both formats apt reads are understood: one-line ``*.list`` files (and ``/etc/apt/sources.list``) and
deb822 ``*.sources`` files. Nothing here names a mirror: it is always the machine's own.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from thunder_env.images.errors import AptSourceError

# Pockets that hold updates on top of a release; debootstrap needs the release itself.
_POCKETS = ("-updates", "-security", "-backports", "-backports-sloppy", "-proposed-updates", "-proposed")
_SCHEMES = ("http://", "https://", "file:/")


@dataclass(frozen=True)
class AptSource:
    """One (type, URI, suite) entry of apt's configuration."""

    type: str
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None
    enabled: bool = True
    origin: str = ""


@dataclass(frozen=True)
class DebianSource:
    """What debootstrap is given: mirror, suite and (when apt names one) the keyring."""

    mirror: str
    suite: str
    keyring: str | None
    origin: str


def parse_one_line(text: str, origin: str = "<text>") -> list[AptSource]:
    """Entries of a one-line format file: ``deb [opt=val ...] uri suite [component ...]``."""
    out: list[AptSource] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s*(.*)$", line)
        if m:
            kind, opts, rest = m.groups()
            for opt in opts.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
            fields = [kind, *rest.split()]
        else:
            fields = line.split()
        if len(fields) < 3 or fields[0] not in ("deb", "deb-src"):
            continue
        out.append(
            AptSource(
                type=fields[0],
                uri=fields[1],
                suite=fields[2],
                components=tuple(fields[3:]),
                signed_by=options.get("signed-by") or None,
                origin=f"{origin}:{lineno}",
            )
        )
    return out


def _deb822_paragraphs(text: str) -> Iterable[tuple[int, dict[str, str]]]:
    fields: dict[str, str] = {}
    start = 0
    key: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield start, fields
            fields, key = {}, None
            continue
        if line[0] in " \t":
            if key is not None:  # continuation of a multi-line field (e.g. an inline key)
                fields[key] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if not fields:
            start = lineno
        key = name.strip().lower()
        fields[key] = value.strip()
    if fields:
        yield start, fields


def parse_deb822(text: str, origin: str = "<text>") -> list[AptSource]:
    """Entries of a deb822 ``*.sources`` file; each paragraph expands to types x URIs x suites."""
    out: list[AptSource] = []
    for lineno, fields in _deb822_paragraphs(text):
        enabled = fields.get("enabled", "yes").strip().lower() not in ("no", "false", "0")
        signed_by = fields.get("signed-by", "").strip()
        # Only a keyring file is useful to debootstrap, not a key pasted inline.
        keyring = signed_by if signed_by.startswith("/") and "\n" not in signed_by else None
        components = tuple(fields.get("components", "").split())
        for kind in fields.get("types", "").split():
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    out.append(AptSource(kind, uri, suite, components, keyring, enabled, f"{origin}:{lineno}"))
    return out


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """All entries, in apt's order: sources.list, then sources.list.d/ (*.list, *.sources) by name.

    Blocking file I/O: call from a thread in async code.
    """
    files: list[Path] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        files.append(main)
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    out: list[AptSource] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise AptSourceError(f"cannot read apt source file {path}: {exc}") from exc
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        out += parse(text, str(path))
    return out


def read_os_codename(os_release: Path = Path("/etc/os-release")) -> str | None:
    """VERSION_CODENAME of the host, or None. Blocking file I/O."""
    try:
        text = os_release.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            return value.strip().strip("\"'") or None
    return None


def _usable(src: AptSource, components: Collection[str]) -> bool:
    return (
        src.enabled
        and src.type == "deb"
        and src.uri.startswith(_SCHEMES)
        and "/" not in src.suite
        and not src.suite.endswith(_POCKETS)
        and set(components) <= set(src.components)
    )


def choose_debian_source(
    sources: Iterable[AptSource],
    *,
    codename: str | None = None,
    known_suites: Collection[str] | None = None,
    components: Collection[str] = ("main",),
) -> DebianSource:
    """Pick the entry debootstrap should use.

    A release entry (not an -updates/-security pocket) carrying all ``components`` is required.
    Among those, one whose suite is the host's own ``codename`` wins, then one whose suite
    debootstrap knows (``known_suites``), then the first; third-party repositories rarely match
    the first two, which is why they exist.
    """
    all_sources = list(sources)
    candidates = [s for s in all_sources if _usable(s, components)]
    if not candidates:
        raise AptSourceError(
            f"no usable Debian entry among the {len(all_sources)} apt source entries found "
            f"(need an enabled 'deb' line of a release suite with components {', '.join(components)}); "
            "add one to /etc/apt/sources.list(.d) or pass --mirror URL --suite SUITE"
        )
    best = next((s for s in candidates if codename and s.suite == codename), None)
    if best is None and known_suites is not None:
        best = next((s for s in candidates if s.suite in known_suites), None)
    if best is None:
        best = candidates[0]
    keyring = best.signed_by if best.signed_by and best.signed_by.endswith(".gpg") else None
    return DebianSource(best.uri.rstrip("/"), best.suite, keyring, best.origin)
