"""Bearer-token check and program binding for the HTTP transport (plain ASGI middleware)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from .binding import PROGRAM_HEADER, SCOPE_STATE_KEY, bind_request
from .errors import ProgramBindingError

PROGRAM_PATH = re.compile(r"^/p/(?P<program>[^/]+)/mcp/?$")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class BearerAuthMiddleware:
    """401 without a valid token; 400/403 when the program a request names is malformed or not allowed.

    ``tokens`` maps each accepted token to the program it is confined to (None: any program).
    Tokens are compared by SHA-256 digest with ``hmac.compare_digest``.
    """

    def __init__(self, app: ASGIApp, tokens: Mapping[str, str | None]) -> None:
        self.app = app
        self._tokens = [(_digest(token), program) for token, program in tokens.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        granted, token_program = self._check(headers.get("authorization", ""))
        if not granted:
            await _reply(
                send,
                401,
                "unauthorized",
                "missing or invalid bearer token: send 'Authorization: Bearer <token>' "
                "(thunder-mcp prints the token when it starts, or set it with --token / THUNDER_MCP_TOKEN)",
                {"www-authenticate": 'Bearer realm="thunder-mcp"'},
            )
            return
        match = PROGRAM_PATH.match(_route_path(scope))
        path_program = unquote(match.group("program")) if match else None
        try:
            program = bind_request(path_program, headers.get(PROGRAM_HEADER) or None, token_program)
        except ProgramBindingError as exc:
            await _reply(send, 400, "bad_program", str(exc))
            return
        except PermissionError as exc:
            await _reply(send, 403, "forbidden", str(exc))
            return
        if program is not None:
            scope.setdefault("state", {})[SCOPE_STATE_KEY] = program
        await self.app(scope, receive, send)

    def _check(self, authorization: str) -> tuple[bool, str | None]:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False, None
        digest = _digest(presented.strip())
        found: tuple[bool, str | None] = (False, None)
        for expected, program in self._tokens:  # no early exit: time does not depend on which token matched
            if hmac.compare_digest(digest, expected):
                found = (True, program)
        return found


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (Starlette keeps the full path and sets root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _reply(send: Send, status: int, error: str, message: str, extra: Mapping[str, str] | None = None) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
