"""Command tools: sandbox_exec, and process_output / process_kill for commands left running."""

# No `from __future__ import annotations`: the SDK evaluates tool signatures, whose descriptions use
# values of the enclosing register() call.
import asyncio
import secrets
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from thunder_env import ExecResult, ProcessNotFoundError
from thunder_env.output import HeadTailBuffer, RollingBuffer
from thunder_env.processes import ExecProcess

from ..errors import ProgramRetiredError
from ..models import ExecOutcome, ProcessOutputResult
from ..programs import ProgramState
from .common import Deps, check_env, check_seconds, program_call, reply, tool
from .sandboxes import SandboxId

ProcessId = Annotated[str, Field(description="A process id returned by sandbox_exec, e.g. 'proc-1a2b3c4d5e6f'")]


def register(server: MCPServer, deps: Deps) -> None:
    manager, config, programs = deps.manager, deps.config, deps.programs

    @tool(server, "Run a command in a sandbox", destructive=True)
    async def sandbox_exec(
        ctx: Context,
        sandbox_id: SandboxId,
        command: Annotated[str, Field(min_length=1, description="A shell command line, run with /bin/sh -c")],
        timeout_s: Annotated[
            float | None,
            Field(
                description=(
                    f"Seconds to wait for the command (default {config.default_wait_s:g}, "
                    f"at most {config.max_wait_s:g}). "
                    "A command still running then is NOT killed: it goes on in the background and the result gives "
                    "its process_id to poll with process_output."
                )
            ),
        ] = None,
        workdir: Annotated[str | None, Field(description="Directory to run in (default: the sandbox workdir)")] = None,
        env: Annotated[dict[str, str] | None, Field(description="Extra environment variables")] = None,
        background: Annotated[
            bool,
            Field(
                description="Return at once with a process_id (for servers, long builds...); poll with process_output"
            ),
        ] = False,
    ) -> Annotated[CallToolResult, ExecOutcome]:
        """Run a shell command in a sandbox and return its exit code, stdout and stderr.

        Long output keeps its head and tail (truncated=true, with the total sizes). Cancelling the call
        kills the command. Commands that outlive timeout_s keep running in the background instead of failing.
        """
        async with program_call(deps, ctx) as state:
            wait_s = check_seconds(
                "timeout_s", config.default_wait_s if timeout_s is None else timeout_s, config.max_wait_s
            )
            check_env(env)
            lease = programs.lease(state, sandbox_id)
            release_slot = state.claim_exec(config.max_processes_per_program)  # until the command ends
            process = ExecProcess(
                process_id="proc-" + secrets.token_hex(6),
                sandbox_id=sandbox_id,
                command=command,
                stdout=RollingBuffer(config.process_buffer_bytes),
                stderr=RollingBuffer(config.process_buffer_bytes),
            )
            process.start(
                manager.exec(
                    lease,
                    command,
                    timeout_s=None,
                    env=env,
                    workdir=workdir,
                    output_limit=config.output_limit_bytes,
                    on_output=process.on_output,
                    tool="sandbox_exec",
                )
            )
            assert process.task is not None
            process.task.add_done_callback(lambda _task: release_slot())
            if not background:
                try:
                    finished = await _wait(process, wait_s, ctx, config.progress_interval_s)
                except BaseException:
                    await process.kill()  # the call was cancelled: the command must not run on unseen
                    raise
                if finished:
                    assert process.task is not None
                    return reply(_outcome(sandbox_id, process.task.result()))  # re-raises a failure to start
            else:
                await asyncio.sleep(0)  # let it start: arguments the manager rejects fail the call, not the poll
                if process.task is not None and process.task.done() and process.task.exception() is not None:
                    process.task.result()
            if state.ended:
                await process.kill()
                raise ProgramRetiredError(state.program_id, "it ended while the command was starting")
            _keep(deps, state, process)
            return reply(_running(sandbox_id, process, config.output_limit_bytes))

    @tool(server, "Read a background process's output", read_only=True, idempotent=True)
    async def process_output(
        ctx: Context,
        process_id: ProcessId,
        stdout_offset: Annotated[
            int,
            Field(ge=0, description="Return stdout from this byte offset (next_stdout_offset of the previous call)"),
        ] = 0,
        stderr_offset: Annotated[int, Field(ge=0, description="Same for stderr")] = 0,
        wait_s: Annotated[
            float | None,
            Field(
                description="Wait up to this many seconds for the process to "
                "finish before answering (default: answer at once)"
            ),
        ] = None,
    ) -> Annotated[CallToolResult, ProcessOutputResult]:
        """Get the status, exit code and new output of a command left running by sandbox_exec."""
        async with program_call(deps, ctx) as state:
            process = _process(state, process_id)
            if wait_s is not None:
                check_seconds("wait_s", wait_s, config.max_wait_s)
                await _wait(process, wait_s, ctx, config.progress_interval_s)
            return reply(_poll(process, stdout_offset, stderr_offset, config.output_limit_bytes))

    @tool(server, "Kill a background process", destructive=True, idempotent=True)
    async def process_kill(ctx: Context, process_id: ProcessId) -> Annotated[CallToolResult, ProcessOutputResult]:
        """Kill a command left running by sandbox_exec, with every process it started, and return the end
        of its output."""
        async with program_call(deps, ctx) as state:
            process = _process(state, process_id)
            await process.kill()
            limit = config.output_limit_bytes
            return reply(_poll(process, max(process.stdout.end - limit, 0), max(process.stderr.end - limit, 0), limit))


def _keep(deps: Deps, state: ProgramState, process: ExecProcess) -> None:
    """Register a process for polling; forget the oldest finished ones beyond a bound."""
    state.processes[process.process_id] = process
    bound = 4 * deps.config.max_processes_per_program
    finished = [p for p in state.processes.values() if not p.running]
    for old in sorted(finished, key=lambda p: p.started_at)[: max(len(state.processes) - bound, 0)]:
        del state.processes[old.process_id]


def _process(state: ProgramState, process_id: str) -> ExecProcess:
    process = state.processes.get(process_id)
    if process is None:
        raise ProcessNotFoundError(process_id)
    return process


async def _wait(process: ExecProcess, wait_s: float, ctx: Context, interval_s: float) -> bool:
    """Wait for the command up to ``wait_s``, reporting progress; True if it finished."""
    assert process.task is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        done, _ = await asyncio.wait({process.task}, timeout=min(remaining, interval_s))
        if done:
            return True
        elapsed = process.duration_s
        await ctx.report_progress(
            elapsed, None, f"{process.process_id} running for {elapsed:.0f} s, {process.output_bytes} bytes of output"
        )


def _outcome(sandbox_id: str, result: ExecResult) -> ExecOutcome:
    status = "timed_out" if result.timed_out else "exited"
    return ExecOutcome(
        sandbox_id=sandbox_id,
        status=status,
        exit_code=result.exit_code,
        stdout=result.stdout.text,
        stderr=result.stderr.text,
        stdout_bytes=result.stdout.total_bytes,
        stderr_bytes=result.stderr.total_bytes,
        truncated=result.stdout.truncated or result.stderr.truncated,
        duration_s=round(result.duration_s, 3),
        oom_killed=result.oom_killed,
    )


def _running(sandbox_id: str, process: ExecProcess, limit: int) -> ExecOutcome:
    """What a command printed so far (head and tail), for a command that goes on in the background."""
    captured = []
    for buffer in (process.stdout, process.stderr):
        data, dropped = buffer.read_from(0)
        head_tail = HeadTailBuffer(limit)
        head_tail.feed(data)
        captured.append((head_tail.result(), dropped))
    (out, out_dropped), (err, err_dropped) = captured
    return ExecOutcome(
        sandbox_id=sandbox_id,
        status="running",
        exit_code=None,
        stdout=out.text,
        stderr=err.text,
        stdout_bytes=process.stdout.end,
        stderr_bytes=process.stderr.end,
        truncated=out.truncated or err.truncated or bool(out_dropped or err_dropped),
        duration_s=round(process.duration_s, 3),
        process_id=process.process_id,
    )


def _poll(process: ExecProcess, stdout_offset: int, stderr_offset: int, limit: int) -> ProcessOutputResult:
    """Output since the offsets, at most ``limit`` bytes per stream; the offsets returned resume after it."""
    status = process.status  # before reading, so 'exited' always comes with the complete output
    result = process.result()
    texts: list[str] = []
    nexts: list[int] = []
    dropped_total = 0
    more = False
    for buffer, offset in ((process.stdout, stdout_offset), (process.stderr, stderr_offset)):
        data, dropped = buffer.read_from(offset)
        chunk = data[:limit]
        more = more or len(data) > limit
        dropped_total += dropped
        texts.append(chunk.decode("utf-8", errors="replace"))
        nexts.append(offset + dropped + len(chunk))
    return ProcessOutputResult(
        process_id=process.process_id,
        sandbox_id=process.sandbox_id,
        command=process.command,
        status=status,
        exit_code=result.exit_code if result is not None else None,
        stdout=texts[0],
        stderr=texts[1],
        next_stdout_offset=nexts[0],
        next_stderr_offset=nexts[1],
        dropped_bytes=dropped_total,
        more_available=more,
        duration_s=round(process.duration_s, 3),
        error=process.error(),
    )
