"""Typed errors of the combined server, the demo and the agent adapters."""

from __future__ import annotations

from thunder_common.errors import ThunderError


class CombinedError(ThunderError):
    """Root of the errors raised by `thunder serve`, `thunder status` and `thunder demo` (the product package)."""


class StatusUnavailableError(CombinedError, ConnectionError):
    """`thunder status` could not read a running server's status."""


class DemoError(CombinedError):
    """A demo program saw a wrong result from a real call (the LLM, a tool), or could not run."""

    def __init__(self, program_id: str, step: int, detail: str) -> None:
        super().__init__(f"program {program_id}, step {step}: {detail}")
        self.program_id = program_id
        self.step = step
        self.detail = detail


class AdapterError(CombinedError):
    """An agent adapter (mini-swe-agent) could not reach or use the Thunder server."""
