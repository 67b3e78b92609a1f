"""`POST /programs/{program_id}/end`: the scheduler's notifier ends a program here (its sandboxes destroyed).

Only the server token or the notifier token reach it (401 otherwise). A malformed program id is a 400 (the
rule of thunder_common.program_ids), an unknown program a 404; a program
that already ended (and is still remembered) answers 200 again, so a retried notification is harmless.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from thunder_common.program_ids import InvalidProgramIdError, is_program_id

from .auth import reply, token_in
from .programs import ProgramRegistry

END_PATH = "/programs/{program_id}/end"
SCHEDULER_REASON = "the scheduler ended it"


class ProgramEndRoute:
    """An ASGI endpoint for ``END_PATH`` (POST only: the route restricts the method)."""

    def __init__(self, programs: ProgramRegistry, tokens: tuple[str, ...]) -> None:
        self.programs = programs
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if not token_in(request.headers.get("authorization", ""), self._tokens):
            await reply(
                send,
                401,
                "unauthorized",
                "ending a program needs the server token or the notifier token: send 'Authorization: Bearer "
                "<token>' (thunder-sched: --env-manager-token)",
                {"www-authenticate": 'Bearer realm="thunder-mcp"'},
            )
            return
        response = await self._end(request.path_params["program_id"])
        await response(scope, receive, send)

    async def _end(self, program_id: str) -> JSONResponse:
        if not is_program_id(program_id):
            message = str(InvalidProgramIdError(program_id, "in the URL"))
            return JSONResponse({"error": "invalid_program_id", "message": message}, status_code=400)
        known = self.programs.get(program_id) is not None or self.programs.is_ending(program_id)
        if known:
            report = await self.programs.end(program_id, SCHEDULER_REASON, external=True)
            return JSONResponse(
                {
                    "program_id": program_id,
                    "status": "ended",
                    "sandboxes_released": report.sandboxes_released,
                    "sandboxes_destroyed": report.sandboxes_destroyed,
                    "processes_killed": report.processes_killed,
                }
            )
        if self.programs.has_ended(program_id):
            return JSONResponse({"program_id": program_id, "status": "already_ended"})
        return JSONResponse(
            {"error": "not_found", "message": f"no program {program_id!r} on this MCP server"}, status_code=404
        )
