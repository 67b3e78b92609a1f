"""Typed results of the tools (their output schemas) and the readable text sent with each."""

from __future__ import annotations

from pydantic import BaseModel, Field

from thunder_env.processes import ProcessStatus


class ToolResult(BaseModel):
    """A tool's structured result; ``to_text`` is what the model reads next to it."""

    def to_text(self) -> str:
        raise NotImplementedError


class PortInfo(BaseModel):
    container_port: int
    host: str
    host_port: int
    url: str = Field(description="Reachable from the machine running the server")


class SandboxSummary(ToolResult):
    sandbox_id: str
    image: str
    workdir: str
    user: str
    network: str
    cpus: float
    memory_bytes: int
    origin: str = Field(description="cold (started on request), warm (from a pool), prepared, or fork")
    lease_count: int = Field(description="How many leases hold the sandbox (more than 1 when shared)")
    ports: list[PortInfo] = Field(default_factory=list)
    running_processes: list[str] = Field(default_factory=list)

    def to_text(self) -> str:
        ports = ", ".join(f"{p.container_port}->{p.url}" for p in self.ports) or "none"
        procs = ", ".join(self.running_processes) or "none"
        shared = f", shared by {self.lease_count} leases" if self.lease_count > 1 else ""
        return (
            f"{self.sandbox_id}: image {self.image}, workdir {self.workdir}, network {self.network}, "
            f"{self.cpus:g} cpu, {self.memory_bytes >> 20} MiB{shared}; ports: {ports}; running: {procs}"
        )


class SandboxList(ToolResult):
    program_id: str
    sandboxes: list[SandboxSummary]

    def to_text(self) -> str:
        if not self.sandboxes:
            return f"Program {self.program_id} holds no sandboxes. Create one with sandbox_create."
        lines = [f"Program {self.program_id} holds {len(self.sandboxes)} sandbox(es):"]
        return "\n".join(lines + ["- " + s.to_text() for s in self.sandboxes])


class ExecOutcome(ToolResult):
    sandbox_id: str
    status: ProcessStatus = Field(
        description="exited | timed_out | killed | failed, or running: the call stopped waiting and the "
        "command goes on in the background (poll it with process_output(process_id))"
    )
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_bytes: int = Field(description="Total bytes the command wrote to stdout so far")
    stderr_bytes: int
    truncated: bool = Field(description="Output was cut in the middle (head and tail kept)")
    duration_s: float
    oom_killed: bool = False
    process_id: str | None = Field(default=None, description="Set when the command runs in the background")
    error: str | None = None

    def to_text(self) -> str:
        if self.status == "running":
            head = (
                f"Still running after {self.duration_s:.1f} s as background process {self.process_id}: "
                f"poll it with process_output(process_id={self.process_id!r}) or stop it with process_kill."
            )
        elif self.status == "failed":
            head = f"Command failed to run: {self.error}"
        else:
            code = "none" if self.exit_code is None else str(self.exit_code)
            notes = {"timed_out": " (timed out, killed)", "killed": " (killed)"}.get(self.status, "")
            oom = " (out of memory)" if self.oom_killed else ""
            head = f"exit code {code}{notes}{oom} after {self.duration_s:.2f} s"
        parts = [head]
        if self.truncated:
            parts.append(
                f"[output truncated: stdout {self.stdout_bytes} bytes, stderr {self.stderr_bytes} bytes in total; "
                "head and tail shown]"
            )
        if self.stdout:
            parts.append("--- stdout ---\n" + self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("--- stderr ---\n" + self.stderr.rstrip("\n"))
        return "\n".join(parts)


class ProcessOutputResult(ToolResult):
    process_id: str
    sandbox_id: str
    command: str
    status: ProcessStatus
    exit_code: int | None
    stdout: str
    stderr: str
    next_stdout_offset: int = Field(description="Pass back as stdout_offset to get only newer output")
    next_stderr_offset: int
    dropped_bytes: int = Field(description="Output that fell out of the server's buffer before it was read")
    more_available: bool = Field(description="More buffered output follows; call again with the new offsets")
    duration_s: float
    error: str | None = None

    def to_text(self) -> str:
        if self.status == "running":
            head = f"{self.process_id} is running ({self.duration_s:.1f} s)"
        elif self.status == "failed":
            head = f"{self.process_id} failed: {self.error}"
        else:
            head = f"{self.process_id} {self.status.replace('_', ' ')}, exit code {self.exit_code}"
        parts = [head + f"; next offsets stdout={self.next_stdout_offset} stderr={self.next_stderr_offset}"]
        if self.dropped_bytes:
            parts.append(f"[{self.dropped_bytes} bytes were dropped from the buffer before being read]")
        if self.more_available:
            parts.append("[more output is buffered: call process_output again with the next offsets]")
        if self.stdout:
            parts.append("--- stdout ---\n" + self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("--- stderr ---\n" + self.stderr.rstrip("\n"))
        return "\n".join(parts)


class FileReadResult(ToolResult):
    sandbox_id: str
    path: str
    content: str
    start_line: int = Field(description="1-based number of the first line returned")
    end_line: int = Field(description="Number of the last line returned (start_line - 1 when none)")
    total_lines: int
    size_bytes: int
    truncated: bool = Field(description="Lines after end_line exist; read on with offset=next_offset")
    next_offset: int | None
    binary: bool = Field(default=False, description="The file is not valid UTF-8; undecodable bytes were replaced")

    def to_text(self) -> str:
        head = f"{self.path}: lines {self.start_line}-{self.end_line} of {self.total_lines} ({self.size_bytes} bytes)"
        if self.truncated:
            head += f"; more follows: file_read(offset={self.next_offset})"
        if self.binary:
            head += "; not UTF-8 text, undecodable bytes replaced"
        return head + "\n" + self.content


class FileWriteResult(ToolResult):
    sandbox_id: str
    path: str
    bytes_written: int
    created: bool

    def to_text(self) -> str:
        return f"{'Created' if self.created else 'Overwrote'} {self.path} ({self.bytes_written} bytes)"


class FileEditResult(ToolResult):
    sandbox_id: str
    path: str
    replacements: int
    bytes_written: int

    def to_text(self) -> str:
        return f"Edited {self.path}: {self.replacements} replacement(s), now {self.bytes_written} bytes"


class FileEntryInfo(BaseModel):
    name: str
    path: str
    kind: str
    size: int
    mtime: float


class FileListResult(ToolResult):
    sandbox_id: str
    path: str
    total_entries: int
    entries: list[FileEntryInfo] = Field(description="Sorted by name; the first 1000 when there are more")

    def to_text(self) -> str:
        if not self.entries:
            return f"{self.path} is empty"
        shown = "" if self.total_entries == len(self.entries) else f", first {len(self.entries)} shown"
        lines = [f"{self.path}: {self.total_entries} entries{shown}"]
        for e in self.entries:
            suffix = "/" if e.kind == "dir" else ("@" if e.kind == "symlink" else "")
            lines.append(f"{e.name}{suffix}\t{e.size}" if e.kind == "file" else f"{e.name}{suffix}")
        return "\n".join(lines)


class SnapshotResult(ToolResult):
    snapshot_id: str
    source_sandbox_id: str

    def to_text(self) -> str:
        return (
            f"Snapshot {self.snapshot_id} taken of {self.source_sandbox_id}. Start copies with "
            f"sandbox_fork(snapshot_id={self.snapshot_id!r}, count=N) or sandbox_create(snapshot_id=...)."
        )


class ForkResult(ToolResult):
    snapshot_id: str
    sandboxes: list[SandboxSummary]

    def to_text(self) -> str:
        ids = ", ".join(s.sandbox_id for s in self.sandboxes)
        return f"{len(self.sandboxes)} sandbox(es) forked from {self.snapshot_id}: {ids}"


class PortResult(ToolResult):
    sandbox_id: str
    container_port: int
    host: str
    host_port: int
    url: str

    def to_text(self) -> str:
        return f"Port {self.container_port} of {self.sandbox_id} is reachable at {self.url}"


class ShareResult(ToolResult):
    sandbox_id: str
    program_id: str
    already_shared: bool

    def to_text(self) -> str:
        if self.already_shared:
            return f"Program {self.program_id} already holds {self.sandbox_id}"
        return f"Program {self.program_id} now holds a lease on {self.sandbox_id}"


class ReleaseResult(ToolResult):
    sandbox_id: str
    destroyed: bool = Field(description="False when other programs still hold the sandbox")
    processes_killed: int

    def to_text(self) -> str:
        tail = "and it was destroyed" if self.destroyed else "other programs still hold it"
        return f"Released {self.sandbox_id} ({self.processes_killed} process(es) killed); {tail}"


class ProgramEndResult(ToolResult):
    program_id: str
    sandboxes_released: int
    sandboxes_destroyed: int
    processes_killed: int

    def to_text(self) -> str:
        return (
            f"Program {self.program_id} ended: {self.sandboxes_released} sandbox lease(s) released, "
            f"{self.sandboxes_destroyed} sandbox(es) destroyed, {self.processes_killed} process(es) killed. "
            "This program can make no further calls."
        )
