"""Typed errors of the scheduler; the HTTP edge converts them to OpenAI-style error bodies."""

from __future__ import annotations

from thunder_common.errors import ThunderError
from thunder_common.program_ids import InvalidProgramIdError, check_program_id


class SchedulerError(ThunderError):
    """Root of every error raised by thunder_sched (below Thunder's ThunderError)."""

    status_code: int = 500
    error_type: str = "scheduler_error"


class ConfigError(SchedulerError, ValueError):
    """A configuration value is invalid."""

    status_code = 500
    error_type = "config_error"


class BadRequestError(SchedulerError, ValueError):
    """The client sent something the scheduler cannot act on."""

    status_code = 400
    error_type = "invalid_request_error"


class ProgramNotFoundError(SchedulerError, KeyError):
    """No live program has this id."""

    status_code = 404
    error_type = "program_not_found"

    def __init__(self, program_id: str) -> None:
        super().__init__(f"no live program {program_id!r} (never seen, released or expired)")
        self.program_id = program_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ProgramTerminatedError(SchedulerError):
    """The program ended while one of its requests was waiting to be admitted."""

    status_code = 409
    error_type = "program_terminated"

    def __init__(self, program_id: str, reason: str) -> None:
        super().__init__(
            f"program {program_id!r} was terminated ({reason}) while this request waited; "
            "start a new program id to continue"
        )
        self.program_id = program_id
        self.reason = reason


class NoBackendError(SchedulerError):
    """No healthy backend with a known KV capacity is available."""

    status_code = 503
    error_type = "no_backend_available"


class ReplicaError(SchedulerError, ConnectionError):
    """A backend could not be reached or failed mid-request."""

    status_code = 502
    error_type = "backend_error"

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"backend {backend} failed: {detail}")
        self.backend = backend
        self.detail = detail


def program_id_or_400(value: object, where: str = "") -> str:
    """The one program-id rule (thunder_common.program_ids) at the scheduler's entry points: a 400 if broken."""
    try:
        return check_program_id(value, where)
    except InvalidProgramIdError as exc:
        raise BadRequestError(str(exc)) from exc


# The Anthropic error types (https://docs.anthropic.com/en/api/errors) for the Messages API routes.
# No usable backend is `overloaded_error`: Anthropic clients (Claude Code, the SDKs) retry it with backoff,
# which is what a client should do while the backends are down or starting; the HTTP status stays 503.
_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    404: "not_found_error",
    409: "invalid_request_error",  # a held request whose program was released: start a new program id
    502: "api_error",
    503: "overloaded_error",
}


def anthropic_error_type(exc: SchedulerError) -> str:
    return _ANTHROPIC_TYPES.get(exc.status_code, "api_error")


def anthropic_error_body(error_type: str, message: str) -> dict[str, object]:
    """`{"type": "error", "error": {"type", "message"}}`, the shape of every Messages API error."""
    return {"type": "error", "error": {"type": error_type, "message": message}}
