"""The MCP server and the scheduler as two separate services (issue 12 item 5), each its real CLI in its own
process: `thunder-sched` in front of the CPU vLLM (fixture `cpu_vllm`) and `thunder-mcp --http
--scheduler-url ...` on the real Docker Engine, driven by the MCP SDK's client.

Tool events reach the scheduler over HTTP; a release in the scheduler ends the program (and its sandbox) in the
MCP server through the scheduler's notifier; `program_end` in the MCP server releases the program in the
scheduler; nothing is left on the engine and neither side logs a lost delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.engine import engine_leftovers, require_engine
from thunder_env.docker import DockerBackend
from thunder_serve.clients.mcp_client import ToolCallError, ToolClient, connect, program_url

pytestmark = pytest.mark.vllm

MCP_TOKEN = "split-mcp-" + secrets.token_hex(12)
NOTIFIER_TOKEN = "split-notifier-" + secrets.token_hex(12)


@dataclass
class Service:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def log(self) -> str:
        return "".join(self.lines)


@contextlib.asynccontextmanager
async def service(
    *argv: str, env: dict[str, str] | None = None, clean: tuple[int, ...] = (0,)
) -> AsyncIterator[Service]:
    """A process whose stderr is collected; SIGTERM at exit, which must end it cleanly (an exit code in
    ``clean``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    svc = Service(proc)

    async def read() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            svc.lines.append(line.decode(errors="replace"))

    svc.reader = asyncio.create_task(read())
    try:
        yield svc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 120)
        await asyncio.wait_for(svc.reader, 30)
        assert code in clean, f"{argv[:2]} exited with {code}:\n{svc.log()}"


async def wait_for(what: str, check: Callable[[], Awaitable[Any]], svc: Service, timeout_s: float = 60) -> Any:
    """Poll ``check`` until it returns a truthy value (the value is returned)."""
    async with asyncio.timeout(timeout_s):
        while True:
            assert svc.proc.returncode is None, f"the service exited while waiting for {what}:\n{svc.log()}"
            with contextlib.suppress(httpx.TransportError):
                value = await check()
                if value:
                    return value
            await asyncio.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def sandbox_and_command(tools: ToolClient) -> str:
    sandbox_id = str((await tools.call("sandbox_create", template="base"))["sandbox_id"])
    result = await tools.call("sandbox_exec", sandbox_id=sandbox_id, command="sleep 0.3; echo hi")
    assert result["exit_code"] == 0 and "hi" in result["stdout"]
    return sandbox_id


async def test_mcp_server_and_scheduler_as_two_processes(cpu_vllm) -> None:
    await require_engine()
    namespace = "test-split-" + secrets.token_hex(3)
    mcp_port = free_port()
    mcp_base = f"http://127.0.0.1:{mcp_port}"
    sched_argv = (
        "-m", "thunder_sched.cli", "--backend", cpu_vllm.url, "--port", "0",
        "--env-manager-url", mcp_base, "--inactivity-timeout", "3600",
    )  # fmt: skip
    async with (
        # uvicorn.run re-raises the SIGTERM it handled once the app shut down: -15 is thunder-sched's clean exit.
        service(*sched_argv, env={"THUNDER_ENV_MANAGER_TOKEN": NOTIFIER_TOKEN}, clean=(0, -signal.SIGTERM)) as sched,
        httpx.AsyncClient(timeout=60) as http,
    ):

        async def sched_url() -> str | None:
            found = re.search(r"Uvicorn running on (http://\S+)", sched.log())
            return found.group(1) if found else None

        sched_base = await wait_for("thunder-sched to listen", sched_url, sched)
        mcp_argv = (
            "-m", "mcp_server", "--http", "--port", str(mcp_port), "--namespace", namespace,
            "--scheduler-url", sched_base, "--idle-timeout", "0", "--log-level", "info",
        )  # fmt: skip
        env = {"THUNDER_MCP_TOKEN": MCP_TOKEN, "THUNDER_NOTIFIER_TOKEN": NOTIFIER_TOKEN}
        async with service(*mcp_argv, env=env) as mcp:

            async def mcp_listening() -> bool:
                return "streamable HTTP at" in mcp.log()

            await wait_for("thunder-mcp to listen", mcp_listening, mcp)

            async def program(program_id: str) -> dict[str, Any] | None:
                response = await http.get(f"{sched_base}/programs/{program_id}")
                return response.json() if response.status_code == 200 else None

            # 1. An LLM step through the scheduler, then a command: the scheduler sees the tool events.
            completion = await http.post(
                f"{sched_base}/v1/chat/completions",
                json={"model": cpu_vllm.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                      "program_id": "split-1"},
            )  # fmt: skip
            assert completion.status_code == 200, completion.text
            async with connect(program_url(mcp_base, "split-1"), MCP_TOKEN) as tools:
                sandbox_1 = await sandbox_and_command(tools)

                async def saw_the_command() -> dict[str, Any] | None:
                    info = await program("split-1")
                    done = info and info["last_tool"] == "sandbox_exec" and info["last_exit_code"] == 0
                    return info if done and info["tools_running"] == 0 else None

                info = await wait_for("the tool events in the scheduler", saw_the_command, sched)
                assert sandbox_1 in info["sandboxes"] and info["last_tool_duration_s"] >= 0.3
                assert info["steps"] == 1 and info["phase"] == "acting" and info["status"] != "terminated"

                # 2. Released in the scheduler -> ended in the MCP server: its sandbox is destroyed.
                released = await http.post(f"{sched_base}/programs/split-1/release")
                assert released.status_code == 200, released.text

                async def split_1_ended() -> bool:
                    return "program split-1 ended (the scheduler ended it)" in mcp.log()

                await wait_for("the MCP server to end split-1", split_1_ended, mcp)
                async with DockerBackend() as backend:  # its sandbox is gone from the engine
                    assert await backend.list_managed({"thunder.sandbox": sandbox_1}) == []
                with pytest.raises(ToolCallError, match=r"has ended \(the scheduler ended it\)"):
                    await tools.call("sandbox_list")

            # 3. Ended in the MCP server (program_end) -> released in the scheduler.
            async with connect(program_url(mcp_base, "split-2"), MCP_TOKEN) as tools:
                sandbox_2 = await sandbox_and_command(tools)
                await wait_for("split-2 in the scheduler", lambda: program("split-2"), sched)
                await tools.call("program_end")

            async def split_2_released() -> dict[str, Any] | None:
                info = await program("split-2")
                return info if info and info["status"] == "terminated" else None

            info = await wait_for("the scheduler to release split-2", split_2_released, sched)
            assert info["terminated_reason"] == "released" and sandbox_2 in info["sandboxes"]
            assert await engine_leftovers(namespace) == []
            # The scheduler's notification of that release found the program already ended: no failure.
            ended_again = await http.post(
                f"{mcp_base}/programs/split-2/end", headers={"Authorization": f"Bearer {NOTIFIER_TOKEN}"}
            )
            assert ended_again.json()["status"] == "already_ended"

            # 4. A program still open when the MCP server stops: it ends there, and is released here.
            async with connect(program_url(mcp_base, "split-3"), MCP_TOKEN) as tools:
                await sandbox_and_command(tools)
            await wait_for("split-3 in the scheduler", lambda: program("split-3"), sched)
        info = await program("split-3")  # the MCP process has exited (cleanly: see `service`)
        assert info is not None and info["status"] == "terminated" and info["terminated_reason"] == "released"
        assert "program split-3 ended (server shut down)" in mcp.log()
        for svc in (sched, mcp):
            assert "on_program_end failed" not in svc.log() and "dropping" not in svc.log(), svc.log()
    assert await engine_leftovers(namespace) == []
