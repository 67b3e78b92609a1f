"""Which program a call belongs to.

Over HTTP the auth middleware resolves the program once per request (path ``/p/{program_id}/mcp``,
header ``X-Program-Id``, or a program-scoped token; they must agree; when none names one, the first
configured agent-id header, e.g. ``X-Claude-Code-Session-Id``) and leaves it in the ASGI scope.
A request that names no program belongs to its MCP session's program. Over stdio and in memory there is
no request: the server's default program (one per process) is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from thunder_common.program_ids import InvalidProgramIdError, check_program_id

from .errors import ProgramBindingError

SESSION_HEADER = "mcp-session-id"
SCOPE_STATE_KEY = "thunder_program_id"
PRINCIPAL_STATE_KEY = "thunder_principal"  # who authenticated the request (a token's identity), if anyone
HOW_TO_BIND = "name the program with the URL /p/<program_id>/mcp or the header X-Program-Id"


def bind_request(path_program: str | None, header_program: str | None, token_program: str | None) -> str | None:
    """The program named by one HTTP request, or None when it names none.

    Raises ``ProgramBindingError`` if the sources disagree or a name is malformed, and ``PermissionError``
    if a program-scoped token is used for another program.
    """
    named = {source: value for source, value in (("path", path_program), ("header", header_program)) if value}
    for value in named.values():
        try:
            check_program_id(value)
        except InvalidProgramIdError as exc:
            raise ProgramBindingError(str(exc)) from exc
    if len(set(named.values())) > 1:
        raise ProgramBindingError(
            f"the URL names program {named['path']!r} but X-Program-Id names {named['header']!r}; send one of them"
        )
    program = next(iter(named.values()), None)
    if token_program is not None:
        if program is not None and program != token_program:
            raise PermissionError(f"this token belongs to program {token_program!r}, not to {program!r}")
        return token_program
    return program


def agent_program_id(headers: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The first of the configured agent-id headers the request carries (``names`` lower case)."""
    return next((headers[name] for name in names if headers.get(name)), None)


def session_program_id(session_id: str) -> str:
    """The program an MCP session stands for when the client names none.

    A digest of the session id, never the id itself: program ids show in status, metrics and logs, and a
    session id is a credential of sorts (with the token, it lets one attach to the session).
    """
    return "session-" + hashlib.sha256(b"thunder-session\0" + session_id.encode()).hexdigest()[:24]


def principal_for_call(request: Any | None) -> str | None:
    """Who authenticated the current tool call (None: no authentication, e.g. stdio or in memory)."""
    scope = (getattr(request, "scope", None) or {}) if request is not None else {}
    principal = (scope.get("state") or {}).get(PRINCIPAL_STATE_KEY)
    return str(principal) if principal else None


def program_for_call(request: Any | None, default_program_id: str | None) -> str:
    """The program of the current tool call, from the transport's request object (None on stdio)."""
    if request is not None:
        scope = getattr(request, "scope", None) or {}
        program = (scope.get("state") or {}).get(SCOPE_STATE_KEY)
        if program:
            return str(program)
        headers = getattr(request, "headers", None)
        session = headers.get(SESSION_HEADER) if headers is not None else None
        if session:
            return session_program_id(session)
    if default_program_id is not None:
        return default_program_id
    raise ProgramBindingError(f"this call belongs to no program: {HOW_TO_BIND}")
