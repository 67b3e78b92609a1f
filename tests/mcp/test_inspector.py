"""A third-party client: the MCP Inspector CLI (npm), over stdio and over HTTP with the token.

The package is fetched once with npx into a stable npm cache (~/.cache/thunder/npm). It is pinned to
0.17.5: later releases need Node 22+ (this machine has Node 20), earlier ones lack ``--header``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import secrets
import shutil
from typing import Any

import pytest

from thunder_env.docker import DockerBackend

from .conftest import TOKEN, HttpTarget, leftovers
from .test_stdio import THUNDER_MCP
from .test_tools import TOOLS

INSPECTOR = "@modelcontextprotocol/inspector@0.17.5"
NPM_CACHE = pathlib.Path.home() / ".cache" / "thunder" / "npm"
FETCH_FAILURES = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "E404", "ENETUNREACH", "network")


async def inspector(*args: str, expect_ok: bool = True) -> tuple[int, str, str]:
    npx = shutil.which("npx")
    if npx is None:
        pytest.fail("npx is not installed: install Node.js 20+ and npm (make install does)", pytrace=False)
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "npm_config_cache": str(NPM_CACHE), "npm_config_update_notifier": "false"}
    process = await asyncio.create_subprocess_exec(
        npx, "-y", INSPECTOR, "--cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 240)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"the MCP Inspector ({INSPECTOR}) did not finish within 240 s", pytrace=False)
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if process.returncode != 0 and any(marker in stderr for marker in FETCH_FAILURES) and "npm" in stderr:
        pytest.fail(f"npx could not fetch {INSPECTOR} (is the npm registry reachable?):\n{stderr[-2000:]}",
                    pytrace=False)  # fmt: skip
    if expect_ok and process.returncode != 0:
        pytest.fail(f"the MCP Inspector failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return process.returncode or 0, stdout, stderr


def json_of(stdout: str) -> Any:
    return json.loads(stdout[stdout.index("{") :])


async def test_inspector_lists_the_tools_over_stdio(backend: DockerBackend, tmp_path: pathlib.Path) -> None:
    namespace = "test-" + secrets.token_hex(4)
    config = {"mcpServers": {"thunder": {
        "command": THUNDER_MCP, "args": ["--namespace", namespace], "env": {"THUNDER_PROGRAM_ID": "inspector"},
    }}}  # fmt: skip
    (tmp_path / "mcp.json").write_text(json.dumps(config))
    _, stdout, _ = await inspector("--config", str(tmp_path / "mcp.json"), "--server", "thunder",
                                   "--method", "tools/list")  # fmt: skip
    tools = {tool["name"]: tool for tool in json_of(stdout)["tools"]}
    assert set(tools) == TOOLS
    assert tools["file_read"]["annotations"]["readOnlyHint"] is True
    assert "outputSchema" in tools["sandbox_exec"]
    assert await leftovers(backend, namespace) == []


async def test_inspector_creates_runs_and_releases_over_http(http_target: HttpTarget) -> None:
    url = http_target.url("inspector")
    auth = ["--transport", "http", "--header", f"Authorization: Bearer {TOKEN}"]

    async def tool(name: str, *arguments: str) -> dict[str, Any]:
        extra = ["--tool-arg", *arguments] if arguments else []
        _, stdout, _ = await inspector(url, *auth, "--method", "tools/call", "--tool-name", name, *extra)
        result = json_of(stdout)
        assert result.get("isError") is not True, result
        return dict(result["structuredContent"])

    sandbox_id = (await tool("sandbox_create", "template=base"))["sandbox_id"]
    executed = await tool("sandbox_exec", f"sandbox_id={sandbox_id}", "command=echo from the inspector")
    assert (executed["exit_code"], executed["stdout"]) == (0, "from the inspector\n")
    assert (await tool("sandbox_release", f"sandbox_id={sandbox_id}"))["destroyed"] is True
    assert http_target.server.manager.sandboxes() == []

    code, stdout, stderr = await inspector(url, "--transport", "http", "--method", "tools/list", expect_ok=False)
    assert code != 0 and "unauthorized" in stdout + stderr
