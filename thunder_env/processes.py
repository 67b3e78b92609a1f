"""Background processes: a command that runs on while the agent does other things."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from .output import RollingBuffer
from .results import ExecResult, OutputChunk, ProcessOutput


@dataclass(eq=False)
class BackgroundProcess:
    process_id: str
    sandbox_id: str
    program_id: str
    marker: str
    user: str
    stdout: RollingBuffer
    stderr: RollingBuffer
    task: asyncio.Task[ExecResult] | None = None
    error: BaseException | None = field(default=None, repr=False)

    def on_output(self, chunk: OutputChunk) -> None:
        (self.stdout if chunk.stream == "stdout" else self.stderr).feed(chunk.data)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def result(self) -> ExecResult | None:
        if self.task is None or not self.task.done() or self.task.cancelled():
            return None
        with contextlib.suppress(Exception):
            return self.task.result()
        return None

    def output_since(self, stdout_offset: int, stderr_offset: int) -> ProcessOutput:
        out, dropped_out = self.stdout.read_from(stdout_offset)
        err, dropped_err = self.stderr.read_from(stderr_offset)
        result = self.result()
        return ProcessOutput(
            process_id=self.process_id,
            stdout=out,
            stderr=err,
            next_stdout_offset=self.stdout.end,
            next_stderr_offset=self.stderr.end,
            dropped_bytes=dropped_out + dropped_err,
            running=self.running,
            exit_code=result.exit_code if result else None,
            timed_out=result.timed_out if result else False,
        )
