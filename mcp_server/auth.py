"""Bearer-token check and program binding for the HTTP transport (plain ASGI middleware)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from thunder_common.asgi import send_json
from thunder_common.program_ids import PROGRAM_HEADER

from .binding import PRINCIPAL_STATE_KEY, SCOPE_STATE_KEY, agent_program_id, bind_request
from .errors import ProgramBindingError

PROGRAM_PATH = re.compile(r"^/p/(?P<program>[^/]+)/mcp/?$")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip()


def token_in(authorization: str, tokens: Sequence[str]) -> bool:
    """Whether the header presents one of ``tokens``, compared by digest in time independent of which."""
    presented = bearer_token(authorization)
    if presented is None:
        return False
    digest = _digest(presented)
    found = False
    for token in tokens:  # no early exit
        found |= hmac.compare_digest(digest, _digest(token))
    return found


def principal_of(token: str) -> str:
    """The identity a token stands for: stable, distinct per token, and not the token itself."""
    return "token-" + hashlib.sha256(b"thunder-principal\0" + token.encode()).hexdigest()[:24]


def authenticated_user(principal: str) -> AuthenticatedUser:
    """The SDK's user for ``principal``: its streamable HTTP session manager records the user that opens
    a session and answers 404 to any request for that session made with another one."""
    return AuthenticatedUser(AccessToken(token=principal, client_id=principal, scopes=[]))


class BearerAuthMiddleware:
    """401 without a valid token; 400/403 when the program a request names is malformed or not allowed.

    ``tokens`` maps each accepted token to the program it is confined to (None: any program).
    Tokens are compared by SHA-256 digest with ``hmac.compare_digest``.
    """

    def __init__(self, app: ASGIApp, tokens: Mapping[str, str | None], program_headers: Sequence[str] = ()) -> None:
        self.app = app
        self._program_headers = tuple(program_headers)
        self._tokens = [(_digest(token), program, principal_of(token)) for token, program in tokens.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        granted, token_program, principal = self._check(headers.get("authorization", ""))
        if not granted or principal is None:
            await reply(
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
        header_program = headers.get(PROGRAM_HEADER) or None
        if path_program is None and header_program is None and token_program is None:
            header_program = agent_program_id(headers, self._program_headers)
        try:
            program = bind_request(path_program, header_program, token_program)
        except ProgramBindingError as exc:
            await reply(send, 400, "bad_program", str(exc))
            return
        except PermissionError as exc:
            await reply(send, 403, "forbidden", str(exc))
            return
        state = scope.setdefault("state", {})
        if program is not None:
            state[SCOPE_STATE_KEY] = program
        # Who calls: MCP sessions are bound to it (the SDK compares scope["user"]), and the tools use it to
        # decide which programs the caller may name (sandbox_share).
        state[PRINCIPAL_STATE_KEY] = principal
        scope["user"] = authenticated_user(principal)
        scope["auth"] = AuthCredentials([])
        await self.app(scope, receive, send)

    def _check(self, authorization: str) -> tuple[bool, str | None, str | None]:
        presented = bearer_token(authorization)
        if presented is None:
            return False, None, None
        digest = _digest(presented)
        found: tuple[bool, str | None, str | None] = (False, None, None)
        for expected, program, principal in self._tokens:  # no early exit: time does not depend on the match
            if hmac.compare_digest(digest, expected):
                found = (True, program, principal)
        return found


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (Starlette keeps the full path and sets root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def reply(send: Send, status: int, error: str, message: str, extra: Mapping[str, str] | None = None) -> None:
    await send_json(send, status, {"error": error, "message": message}, extra)
