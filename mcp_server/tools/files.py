"""File tools: read (by lines), write, edit (exact search/replace) and list, inside the file area."""

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from thunder_env import FileOperationError, FileTooLargeError, InvalidSpecError, Lease

from ..errors import TextNotFoundError
from ..models import FileEditResult, FileEntryInfo, FileListResult, FileReadResult, FileWriteResult
from ..paths import ResolvedPath, resolve_in_sandbox
from .common import Deps, program_call, reply, tool
from .sandboxes import SandboxId

FilePath = Annotated[str, Field(min_length=1, description="Absolute, or relative to the sandbox workdir")]
MAX_LIST_ENTRIES = 1000


def register(server: MCPServer, deps: Deps) -> None:
    manager, config, programs = deps.manager, deps.config, deps.programs

    async def resolve(lease: Lease, path: str, tool: str) -> ResolvedPath:
        return await resolve_in_sandbox(manager, lease, path, config.extra_file_roots, tool)

    async def read_text(lease: Lease, target: ResolvedPath) -> tuple[str, bool, int]:
        if target.kind is None:
            raise FileOperationError(target.requested, "no such file")
        if target.kind == "dir":
            raise FileOperationError(target.requested, "is a directory; use file_list")
        if target.kind != "file":
            raise FileOperationError(target.requested, "is not a regular file")
        if target.size is not None and target.size > config.file_max_bytes:
            raise FileTooLargeError(target.requested, config.file_max_bytes, target.size)
        data = await manager.read_file(lease, target.path, max_bytes=config.file_max_bytes)
        try:
            return data.decode("utf-8"), False, len(data)
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace"), True, len(data)

    @tool(server, "Read a file", read_only=True, idempotent=True)
    async def file_read(
        ctx: Context,
        sandbox_id: SandboxId,
        path: FilePath,
        offset: Annotated[int, Field(ge=1, description="First line to return (1-based)")] = 1,
        limit: Annotated[
            int | None, Field(ge=1, description=f"How many lines at most (default {config.file_read_default_lines})")
        ] = None,
    ) -> Annotated[CallToolResult, FileReadResult]:
        """Read a text file from a sandbox, by lines. The content is returned exactly (no line numbers),
        so it can be copied into file_edit. Large files come in pieces: continue at next_offset."""
        async with program_call(deps, ctx, runs_command=True) as state:
            lease = programs.lease(state, sandbox_id)
            target = await resolve(lease, path, "file_read")
            text, binary, size = await read_text(lease, target)
            lines = text.splitlines(keepends=True)
            if offset > len(lines) + 1:
                raise InvalidSpecError(f"offset {offset} is past the end of {target.path} ({len(lines)} lines)")
            wanted = lines[offset - 1 : offset - 1 + (limit or config.file_read_default_lines)]
            chosen: list[str] = []
            budget = config.file_read_max_bytes
            for line in wanted:
                encoded = len(line.encode())
                if encoded > budget:
                    if not chosen:  # one huge line: return its start rather than nothing
                        chosen.append(line.encode()[:budget].decode("utf-8", errors="ignore"))
                    break
                chosen.append(line)
                budget -= encoded
            end_line = offset - 1 + len(chosen)
            truncated = end_line < len(lines)
            return reply(
                FileReadResult(
                    sandbox_id=sandbox_id,
                    path=target.path,
                    content="".join(chosen),
                    start_line=offset,
                    end_line=end_line,
                    total_lines=len(lines),
                    size_bytes=size,
                    truncated=truncated,
                    next_offset=end_line + 1 if truncated else None,
                    binary=binary,
                )
            )

    @tool(server, "Write a file", destructive=True, idempotent=True)
    async def file_write(
        ctx: Context,
        sandbox_id: SandboxId,
        path: FilePath,
        content: Annotated[str, Field(description="The complete new content (UTF-8)")],
        mode: Annotated[
            str | None,
            Field(
                pattern=r"^0?[0-7]{3}$",
                description="Permissions in octal, e.g. '755'; default: keep the existing file's, else '644'",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, FileWriteResult]:
        """Create or overwrite a file in a sandbox (missing parent directories are created)."""
        async with program_call(deps, ctx, runs_command=True) as state:
            lease = programs.lease(state, sandbox_id)
            data = content.encode()
            if len(data) > config.file_write_max_bytes:
                raise InvalidSpecError(
                    f"content is {len(data)} bytes, over the {config.file_write_max_bytes}-byte limit of file_write"
                )
            target = await resolve(lease, path, "file_write")
            async with deps.file_lock(sandbox_id, target.path):
                if target.kind is not None and target.kind != "file":
                    raise FileOperationError(target.requested, f"exists and is not a regular file ({target.kind})")
                file_mode = int(mode, 8) if mode is not None else (target.mode or 0o644)
                await manager.write_file(lease, target.path, data, file_mode)
            return reply(
                FileWriteResult(
                    sandbox_id=sandbox_id, path=target.path, bytes_written=len(data), created=target.kind is None
                )
            )

    @tool(server, "Edit a file", destructive=True)
    async def file_edit(
        ctx: Context,
        sandbox_id: SandboxId,
        path: FilePath,
        old_text: Annotated[
            str,
            Field(
                min_length=1,
                description="The exact text to replace, including "
                "whitespace and indentation; it must occur exactly once unless "
                "replace_all is set",
            ),
        ],
        new_text: Annotated[str, Field(description="The replacement text")],
        replace_all: Annotated[bool, Field(description="Replace every occurrence")] = False,
    ) -> Annotated[CallToolResult, FileEditResult]:
        """Replace text in an existing file. Fails, changing nothing, if old_text is absent or (without
        replace_all) occurs more than once; then read the file and give a longer, unique old_text."""
        async with program_call(deps, ctx, runs_command=True) as state:
            lease = programs.lease(state, sandbox_id)
            if old_text == new_text:
                raise InvalidSpecError("old_text and new_text are identical: nothing to change")
            target = await resolve(lease, path, "file_edit")
            async with deps.file_lock(sandbox_id, target.path):
                text, binary, _ = await read_text(lease, target)
                if binary:
                    raise FileOperationError(target.requested, "is not UTF-8 text; edit it with sandbox_exec")
                count = text.count(old_text)
                if count == 0:
                    raise TextNotFoundError(
                        f"old_text was not found in {target.path}; read the file (file_read) and copy the exact "
                        "text, including whitespace and indentation"
                    )
                if count > 1 and not replace_all:
                    raise TextNotFoundError(
                        f"old_text occurs {count} times in {target.path}; include more surrounding lines to make "
                        "it unique, or set replace_all=true"
                    )
                updated = text.replace(old_text, new_text).encode()
                await manager.write_file(lease, target.path, updated, target.mode or 0o644)
            return reply(
                FileEditResult(sandbox_id=sandbox_id, path=target.path, replacements=count, bytes_written=len(updated))
            )

    @tool(server, "List a directory", read_only=True, idempotent=True)
    async def file_list(
        ctx: Context,
        sandbox_id: SandboxId,
        path: Annotated[str, Field(min_length=1, description="Directory, absolute or relative to the workdir")] = ".",
    ) -> Annotated[CallToolResult, FileListResult]:
        """List a directory of a sandbox: names, kinds (file, dir, symlink, other), sizes and times."""
        async with program_call(deps, ctx, runs_command=True) as state:
            lease = programs.lease(state, sandbox_id)
            target = await resolve(lease, path, "file_list")
            if target.kind is None:
                raise FileOperationError(target.requested, "no such directory")
            if target.kind != "dir":
                raise FileOperationError(target.requested, "is not a directory; use file_read")
            entries = await manager.list_dir(lease, target.path)
            return reply(
                FileListResult(
                    sandbox_id=sandbox_id,
                    path=target.path,
                    total_entries=len(entries),
                    entries=[
                        FileEntryInfo(name=e.name, path=e.path, kind=e.kind, size=e.size, mtime=e.mtime)
                        for e in entries[:MAX_LIST_ENTRIES]
                    ],
                )
            )
