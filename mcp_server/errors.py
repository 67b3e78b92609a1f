"""Errors of the MCP front-end, and their conversion to ``ToolError`` at the edge.

Domain errors stay typed (``ThunderError`` subclasses) inside; only the tool wrapper turns them into
the text the model reads. Anything else is a bug and reaches the client as the SDK's generic error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from thunder_common.errors import ThunderError
from thunder_env.errors import InvalidSpecError, ProgramEndedError


class McpServerError(ThunderError):
    """Root of the MCP front-end's own errors (errors of the env manager pass through as they are)."""


class AccessDeniedError(McpServerError, PermissionError):
    """The calling program holds no lease on the sandbox (another program does)."""

    def __init__(self, sandbox_id: str, program_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.program_id = program_id
        super().__init__(
            f"sandbox {sandbox_id!r} is held by another program, not by {program_id!r}; a program that holds it "
            f"can grant access with sandbox_share(sandbox_id={sandbox_id!r}, program_id={program_id!r})"
        )


class SnapshotAccessError(McpServerError, LookupError):
    """The snapshot is unknown to the calling program (never taken by it, or already gone)."""

    def __init__(self, snapshot_id: str, program_id: str) -> None:
        self.snapshot_id = snapshot_id
        self.program_id = program_id
        super().__init__(
            f"program {program_id!r} has no snapshot {snapshot_id!r}: fork only snapshots this program took "
            "with sandbox_snapshot (they go when the program ends)"
        )


class PathOutsideSandboxError(McpServerError, InvalidSpecError):
    """A file path resolves (through '..' or symlinks) outside the directories file tools may touch."""

    def __init__(self, path: str, resolved: str, roots: tuple[str, ...]) -> None:
        self.path = path
        self.resolved = resolved
        self.roots = roots
        via = "" if path == resolved else f" (it resolves to {resolved!r})"
        super().__init__(
            f"path {path!r} is outside the sandbox's file area{via}; file tools work under "
            f"{', '.join(roots)}; use sandbox_exec for anything else"
        )


class ProgramAccessError(McpServerError, PermissionError):
    """A call names another program the caller may not name (sandbox_share toward an unknown program)."""

    def __init__(self, program_id: str) -> None:
        self.program_id = program_id
        super().__init__(
            f"cannot share with program {program_id!r}: share only with a program configured on this server "
            "or one that has already made a call with the same token (let it call sandbox_list first)"
        )


class ProgramBindingError(McpServerError):
    """A request does not say which program it belongs to, or says so inconsistently."""


class ProgramRetiredError(McpServerError, ProgramEndedError):
    """A call names a program that has already ended."""

    def __init__(self, program_id: str, reason: str) -> None:
        super().__init__(program_id)
        self.reason = reason
        self.args = (
            f"program {program_id!r} has ended ({reason}); its sandboxes are gone. "
            "Start a new program (a new program id, or a new session) to continue",
        )


class LimitError(McpServerError):
    """A cap of the server is reached: the call is refused and changes nothing; it succeeds again once
    below the cap."""


class ProcessLimitError(LimitError):
    """A program has as many commands (and file operations) in flight as it may."""

    def __init__(self, program_id: str, running: int, limit: int) -> None:
        self.program_id = program_id
        self.limit = limit
        super().__init__(
            f"program {program_id!r} has {running} commands or file operations in flight, the most this server "
            f"allows ({limit}); wait for some (process_output with wait_s) or stop them (process_kill), then retry"
        )


class PortLimitError(LimitError):
    """A program has as many ports exposed as it may."""

    def __init__(self, program_id: str, exposed: int, limit: int) -> None:
        self.program_id = program_id
        self.limit = limit
        super().__init__(
            f"program {program_id!r} has {exposed} ports exposed, the most this server allows ({limit}); "
            "release a sandbox whose ports it no longer needs (sandbox_release), then retry"
        )


class ProgramLimitError(LimitError):
    """The server runs as many programs as it may."""

    def __init__(self, live: int, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"this server already runs {live} programs, the most it allows ({limit}); end finished programs "
            "(program_end) or retry once idle ones have been ended"
        )


class TextNotFoundError(McpServerError, LookupError):
    """file_edit: the text to replace is absent, or present more than once."""


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Turn anticipated failures into ``ToolError`` so the model reads an actionable message."""
    try:
        yield
    except ToolError:
        raise
    except ThunderError as exc:
        raise ToolError(str(exc)) from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
        )
        raise ToolError(f"invalid arguments: {problems}") from exc
