"""The real Claude Code CLI (npm @anthropic-ai/claude-code, pinned by scripts/ensure-claude-code.sh, run with
HOME in a scratch folder) through `thunder serve` on the real CPU vLLM and the real Docker Engine: its LLM
requests (Anthropic Messages API, ANTHROPIC_BASE_URL) and its MCP server over HTTP, in one program.

This is the recipe of docs/agents.md ("Claude Code"): `claude -p --session-id $SID`; the scheduler finds the
program in Claude Code's own `X-Claude-Code-Session-Id` header (the default program-id rule, no patch), and
the MCP config names the same id with `X-Program-Id: ${THUNDER_PROGRAM_ID}` (Claude Code sends no session id
to MCP servers).

The model: the test model is a random-weight Llama that never emits end-of-sequence, so with it Claude Code's
answer always reaches its output limit and `claude -p` stops with "Claude's response exceeded the N output
token maximum", exit status 1. This test uses its variant whose every answer ends at once (fixture
`cpu_vllm_ending`: end-of-sequence is the argmax by far, see thunder_sched/cpu_vllm/_ending_variant.py), so
`claude -p` exits 0 with an empty answer (stop reason end_turn, one output token). Asserted besides: the
program is in /programs with exact token counts (the usage vLLM reported for its last request), MCP
tools/list was served to the same program, ending the program releases it and its sandbox on both sides,
nothing is left on the engine, and `claude mcp list` shows Thunder connected over stdio and over HTTP.
Claude Code is kept from calling home (DISABLE_TELEMETRY, DISABLE_ERROR_REPORTING, DISABLE_AUTOUPDATER,
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC); it talks to loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server import HttpConfig
from mcp_server.binding import SCOPE_STATE_KEY
from tests.engine import engine_leftovers, require_engine
from tests.vllm.test_sched_messages_vllm import prompt_of, sse_events
from thunder_common.serving import serving
from thunder_env import ManagerConfig
from thunder_sched.config import SchedulerConfig
from thunder_serve.app import open_combined
from thunder_serve.clients.mcp_client import connect, program_url
from thunder_serve.config import CombinedConfig

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
THUNDER_MCP = str(Path(sys.executable).with_name("thunder-mcp"))
MAX_OUTPUT = 40  # CLAUDE_CODE_MAX_OUTPUT_TOKENS: Claude Code asks for 32,000 otherwise, over max_model_len
CLI_TIMEOUT_S = 300.0
SYSTEM = "You are a coding agent. Run commands in a sandbox with the thunder MCP tools."
QUIET = {  # no traffic beyond loopback: no telemetry, error reports, update checks or other extras
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


@pytest.fixture(scope="module")
def claude() -> str:
    """The pinned Claude Code, installed on first use; a missing prerequisite fails with the reason."""
    done = subprocess.run(
        [str(REPO / "scripts" / "ensure-claude-code.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"cannot install Claude Code (make claude-code): {done.stderr.strip()}", pytrace=False)
    return done.stdout.strip()


@dataclass
class Recorder:
    """ASGI wrapper around the served app: which program each MCP request was bound to, by JSON-RPC method,
    and the bytes of every Messages response (to read the usage vLLM reported)."""

    app: ASGIApp
    mcp: list[tuple[str, str | None]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.endswith("/mcp") and scope.get("method") == "POST":
            await self._mcp(scope, receive, send)
        elif path == "/v1/messages":
            chunks: list[bytes] = []

            async def keep(message: Message) -> None:
                if message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))
                await send(message)

            await self.app(scope, receive, keep)
            self.messages.append(b"".join(chunks))
        else:
            await self.app(scope, receive, send)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, pending = b"", [await receive()]
        body += pending[0].get("body", b"")
        while pending[-1].get("more_body"):
            pending.append(await receive())
            body += pending[-1].get("body", b"")

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        scope.setdefault("state", {})  # the auth middleware binds the program in this same dict
        await self.app(scope, replay, send)
        try:
            method = json.loads(body).get("method", "?")
        except (ValueError, AttributeError):
            method = "?"
        self.mcp.append((method, scope["state"].get(SCOPE_STATE_KEY)))


@dataclass
class Served:
    url: str
    token: str
    namespace: str
    recorder: Recorder


@pytest.fixture
async def served(cpu_vllm_ending) -> AsyncIterator[Served]:
    """`thunder serve --backend <vLLM> --model-alias '*=<served model>'` in process, on a free loopback port."""
    await require_engine()
    namespace = "test-claude-" + secrets.token_hex(3)
    token = "claude-e2e-" + secrets.token_hex(12)
    config = CombinedConfig(
        scheduler=SchedulerConfig(backends=(cpu_vllm_ending.url,), model_aliases={"*": cpu_vllm_ending.model}),
        http=HttpConfig(host="127.0.0.1", port=0, token=token),
        manager=ManagerConfig(namespace=namespace),
    )
    async with open_combined(config) as combined:
        recorder = Recorder(combined.app)
        async with serving(recorder, "127.0.0.1", 0) as running:
            yield Served(running.url, token, namespace, recorder)
    assert await engine_leftovers(namespace) == []  # the server closed: nothing of it on the engine


def claude_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Claude Code run: ours minus any Anthropic/Claude settings, HOME in scratch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    return {**env, **QUIET, "HOME": str(home), "PYTHONPATH": str(REPO), **extra}


async def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"{argv[:2]} did not finish in {CLI_TIMEOUT_S} s: {out.decode()[-2000:]}", pytrace=False)
    return proc.returncode or 0, out.decode()


async def test_claude_code_runs_one_program_through_thunder_serve(claude: str, served: Served, tmp_path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    session = str(uuid.uuid4())
    mcp_config = tmp_path / "mcp.json"
    server = {
        "type": "http",
        "url": f"{served.url}/mcp",
        "headers": {"Authorization": "Bearer ${THUNDER_TOKEN}", "X-Program-Id": "${THUNDER_PROGRAM_ID}"},
    }
    mcp_config.write_text(json.dumps({"mcpServers": {"thunder": server}}))
    env = claude_env(
        home,
        ANTHROPIC_BASE_URL=served.url,
        ANTHROPIC_API_KEY=served.token,  # accepted as x-api-key; never forwarded to vLLM
        ANTHROPIC_MODEL="claude-sonnet-4-5",  # thunder serve's --model-alias maps it to the served model
        ANTHROPIC_SMALL_FAST_MODEL="claude-haiku-4-5",
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT),
        MAX_THINKING_TOKENS="0",  # else Claude Code asks for a thinking budget under vLLM's minimum (1,024)
        THUNDER_TOKEN=served.token,
        THUNDER_PROGRAM_ID=session,
    )
    # Claude Code's own system prompt alone is over the test model's 8,192-token context: a short one instead.
    argv = [claude, "-p", "List the files of the workspace.", "--session-id", session, "--system-prompt", SYSTEM]
    code, out = await run([*argv, "--mcp-config", str(mcp_config), "--strict-mcp-config"], env, work)
    assert code == 0, out

    auth = {"Authorization": f"Bearer {served.token}"}
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=60) as http:
        # The LLM side: one program named by Claude Code's own session id, counted exactly.
        info = (await http.get(f"/programs/{session}")).json()
        assert info.get("status") == "active" and info["tokens_exact"], info
        assert info["steps"] == len(served.recorder.messages) >= 1
        events = dict(sse_events(served.recorder.messages[-1].decode()))
        start, end = events["message_start"]["message"]["usage"], events["message_delta"]["usage"]
        assert end["output_tokens"] == 1 and events["message_delta"]["delta"]["stop_reason"] == "end_turn"
        assert info["tokens"] == prompt_of(start) + end["output_tokens"]
        # The MCP side: Claude Code listed the tools as the same program.
        assert ("tools/list", session) in served.recorder.mcp, served.recorder.mcp

        # What the agent's tool calls would do (the noise model calls none): a sandbox in the program.
        async with connect(program_url(served.url, session), served.token) as tools:
            await tools.call("sandbox_create", template="base")
        status = (await http.get("/thunder/status")).json()
        row = next(p for p in status["programs"] if p["program_id"] == session)
        assert len(row["sandboxes"]) == 1, row

        # Ending the session releases the program on both sides, with its sandbox.
        assert (await http.post(f"/programs/{session}/release")).status_code == 200
        for _ in range(300):  # the MCP side ends the program after the scheduler's notice: wait up to 60 s
            if not await engine_leftovers(served.namespace):
                break
            await asyncio.sleep(0.2)
        assert await engine_leftovers(served.namespace) == []
        status = (await http.get("/thunder/status")).json()
        assert all(p["program_id"] != session for p in status["programs"]), status["programs"]
        assert (await http.get(f"/programs/{session}")).json().get("status") != "active"


async def test_claude_mcp_list_shows_thunder_connected_over_stdio_and_http(
    claude: str, served: Served, tmp_path
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = claude_env(home)
    stdio_namespace = served.namespace + "-stdio"
    added = [
        ["mcp", "add", "--transport", "http", "thunder-http", f"{served.url}/mcp",
         "--header", f"Authorization: Bearer {served.token}"],
        ["mcp", "add", "thunder-stdio", "--", THUNDER_MCP, "--namespace", stdio_namespace],
    ]  # fmt: skip
    for args in added:
        code, out = await run([claude, *args], env, work)
        assert code == 0, out
    code, out = await run([claude, "mcp", "list"], env, work)
    assert code == 0, out
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith("thunder-")}
    assert set(lines) == {"thunder-http", "thunder-stdio"}, out
    assert all("Connected" in line and "Failed" not in line for line in lines.values()), out
    assert await engine_leftovers(stdio_namespace) == []
