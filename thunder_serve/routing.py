"""`/p/{program_id}/v1/...`: the OpenAI API with the program named in the URL, like `/p/{program_id}/mcp`.

For clients that can set only a base URL (OpenHands, most OpenAI SDK configurations): the request goes to
`/v1/...` with `X-Program-Id: <program_id>`. A different X-Program-Id in the request is refused (400), and a
different `program_id` in the body is refused by the scheduler, as for any request naming two programs.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from thunder_common.asgi import send_json
from thunder_common.program_ids import PROGRAM_HEADER, InvalidProgramIdError, check_program_id
from thunder_sched.errors import anthropic_error_body

PROGRAM_API_PATH = "/p/{program_id}/v1/{rest:path}"
_HEADER = PROGRAM_HEADER.encode()


class ProgramScopedApi:
    """ASGI app for the route `PROGRAM_API_PATH`: rewrites the scope and hands it to the scheduler's app."""

    def __init__(self, api: ASGIApp) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params", {})
        program_id = unquote(str(params.get("program_id", "")))
        anthropic = str(params.get("rest", "")).startswith("messages")  # errors in the API's own shape
        try:
            check_program_id(program_id, "in the URL")
        except InvalidProgramIdError as exc:
            await _error(send, 400, str(exc), anthropic=anthropic)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != _HEADER]
        named = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == _HEADER]
        if any(value != program_id for value in named):
            message = f"the URL names program {program_id!r} but X-Program-Id names {named[0]!r}"
            await _error(send, 400, message, anthropic=anthropic)
            return
        path = "/v1/" + str(params.get("rest", ""))
        inner = {
            **scope,
            "path": path,
            "raw_path": path.encode(),
            "headers": [*headers, (_HEADER, program_id.encode("latin-1"))],
        }
        await self.api(inner, receive, send)


async def _error(send: Send, status: int, message: str, *, anthropic: bool) -> None:
    if anthropic:
        shaped = anthropic_error_body("invalid_request_error", message)
    else:
        shaped = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    await send_json(send, status, shaped)
