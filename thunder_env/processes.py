"""The one background-process model: a command a caller can poll, started in the background or outliving
the call that started it (the MCP server's sandbox_exec and process_output/process_kill use it).

The command runs through ``EnvManager.exec`` in its own task (``start(manager.exec(..., on_output=
process.on_output))``), so the manager's lease checks, tool events, head+tail capture and kill-on-cancel apply
alike whether the caller waits for it or not; a rolling buffer keeps what it printed for polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from .output import RollingBuffer
from .results import ExecResult, OutputChunk

ProcessStatus = Literal["running", "exited", "timed_out", "killed", "failed"]

# How long a kill may take to confirm before we stop waiting (the kill itself still completes).
KILL_WAIT_S = 15.0


@dataclass(eq=False)
class ExecProcess:
    process_id: str
    sandbox_id: str
    command: str
    stdout: RollingBuffer
    stderr: RollingBuffer
    started_at: float = field(default_factory=time.monotonic)
    task: asyncio.Task[ExecResult] | None = None
    killed: bool = False
    finished_at: float | None = None
    output_bytes: int = 0

    def on_output(self, chunk: OutputChunk) -> None:
        self.output_bytes += len(chunk.data)
        (self.stdout if chunk.stream == "stdout" else self.stderr).feed(chunk.data)

    def start(self, coro: Coroutine[Any, Any, ExecResult]) -> None:
        self.task = asyncio.create_task(coro, name=f"thunder-process-{self.process_id}")
        self.task.add_done_callback(self._finished)

    def _finished(self, _task: asyncio.Task[ExecResult]) -> None:
        self.finished_at = time.monotonic()
        result = self.result()
        if result is None:
            return
        # Output the backend reported only in the result (never streamed) still reaches the poller.
        for buffer, captured in ((self.stdout, result.stdout), (self.stderr, result.stderr)):
            if buffer.end == 0 and captured.data:
                buffer.feed(captured.data)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def duration_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at

    def result(self) -> ExecResult | None:
        """The command's result once it exited (or timed out); None while running or if it failed."""
        task = self.task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def error(self) -> str | None:
        task = self.task
        if task is None or not task.done() or task.cancelled():
            return None
        exc = task.exception()
        return None if exc is None else str(exc) or type(exc).__name__

    @property
    def status(self) -> ProcessStatus:
        if self.running:
            return "running"
        if self.killed or (self.task is not None and self.task.cancelled()):
            return "killed"
        result = self.result()
        if result is None:
            return "failed"
        return "timed_out" if result.timed_out else "exited"

    async def kill(self) -> None:
        """Stop the command and its children in the sandbox; returns once the kill is confirmed."""
        task = self.task
        if task is None or task.done():
            return
        self.killed = True
        task.cancel()  # the backend kills the process tree when its exec is cancelled
        # Shielded: a kill triggered by a cancelled call must still finish before we report it.
        with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_WAIT_S):
            await asyncio.wait({task})
