"""The one program-id rule of every entry point (env manager, MCP binding, scheduler, `thunder serve`).

A program id travels in URL paths (/p/{id}/mcp, /p/{id}/v1, /programs/{id}/...), HTTP headers, container
labels, logs and metrics labels, so it is kept to an alphabet that needs no escaping in any of them and
cannot name a path (no '/', and it cannot start with '.'). A UUID (a Claude Code session id) fits.
"""

from __future__ import annotations

import re

from .errors import ThunderError

# The header that names a request's program on every server (lower case, as ASGI and httpx present it).
PROGRAM_HEADER = "x-program-id"
MAX_PROGRAM_ID = 128
PROGRAM_ID_RULE = f"1-{MAX_PROGRAM_ID} characters from A-Z a-z 0-9 . _ : @ + -, starting with a letter or digit"
_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@+-]{{0,{MAX_PROGRAM_ID - 1}}}")


class InvalidProgramIdError(ThunderError, ValueError):
    """A program id breaks the rule; the message names the id and the rule."""

    def __init__(self, program_id: object, where: str = "") -> None:
        self.program_id = program_id
        place = f" {where}" if where else ""
        super().__init__(f"invalid program id {program_id!r}{place}: use {PROGRAM_ID_RULE}")


def is_program_id(value: object) -> bool:
    return isinstance(value, str) and _PATTERN.fullmatch(value) is not None


def check_program_id(value: object, where: str = "") -> str:
    """The id itself if it follows the rule, else ``InvalidProgramIdError`` (``where`` says where it came from)."""
    if isinstance(value, str) and _PATTERN.fullmatch(value) is not None:
        return value
    raise InvalidProgramIdError(value, where)


# Agents' own run ids arrive in headers named by configuration (thunder-sched --program-id-from, thunder-mcp
# --program-header): such a name must be an HTTP token (RFC 9110).
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def is_header_name(value: str) -> bool:
    return _HEADER_NAME.fullmatch(value) is not None
