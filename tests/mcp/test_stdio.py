"""thunder-mcp as a subprocess over stdio, and the CLI's configuration."""

from __future__ import annotations

import argparse
import pathlib
import secrets
import sys

import pytest
from mcp import Client, StdioServerParameters

from mcp_server.cli import build_parser, configs_from_args
from thunder_env.docker import DockerBackend

from .conftest import call, create_sandbox, leftovers, sh

THUNDER_MCP = str(pathlib.Path(sys.executable).parent / "thunder-mcp")


async def test_stdio_server_runs_tools_and_ends_its_program_when_the_session_closes(backend: DockerBackend) -> None:
    namespace = "test-" + secrets.token_hex(4)
    params = StdioServerParameters(
        command=THUNDER_MCP, args=["--namespace", namespace], env={"THUNDER_PROGRAM_ID": "stdio-prog"}
    )
    async with Client(params) as client:
        assert len((await client.list_tools()).tools) == 15
        sandbox_id = await create_sandbox(client)
        assert (await call(client, "sandbox_list"))["program_id"] == "stdio-prog"
        assert (await sh(client, sandbox_id, "echo over stdio"))["stdout"] == "over stdio\n"
        await sh(client, sandbox_id, "sleep 300", background=True)
        assert len(await leftovers(backend, namespace)) == 1
    # The client closed stdin: the server ended its program and removed its container before exiting.
    assert await leftovers(backend, namespace) == []


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_cli_configuration_and_environment() -> None:
    _, server, http, _ = configs_from_args(parse("--program-id", "p-flag"), {"THUNDER_PROGRAM_ID": "p-env"})
    assert http is None and server.default_program_id == "p-flag"
    _, server, _, _ = configs_from_args(parse(), {"THUNDER_PROGRAM_ID": "p-env"})
    assert server.default_program_id == "p-env"
    _, server, _, _ = configs_from_args(parse(), {})
    assert server.default_program_id and server.default_program_id.startswith("stdio-")

    manager, server, http, generated = configs_from_args(
        parse("--http", "--namespace", "ns1", "--program-token", "agent-1=" + "t" * 20), {}
    )
    assert http is not None and generated and len(http.token) >= 32
    assert manager.namespace == "ns1" and server.default_program_id is None
    assert http.program_tokens == {"t" * 20: "agent-1"}
    _, _, http, generated = configs_from_args(parse("--http"), {"THUNDER_MCP_TOKEN": "x" * 20})
    assert http is not None and http.token == "x" * 20 and not generated
    _, _, http, _ = configs_from_args(parse("--http", "--token", "y" * 20), {"THUNDER_MCP_TOKEN": "x" * 20})
    assert http is not None and http.token == "y" * 20

    with pytest.raises(ValueError, match="--program-id is for stdio"):
        configs_from_args(parse("--http", "--program-id", "p"), {})
    with pytest.raises(ValueError, match="PROGRAM=TOKEN"):
        configs_from_args(parse("--http", "--program-token", "nope"), {})
    with pytest.raises(ValueError, match="at least 16"):
        configs_from_args(parse("--http", "--token", "short"), {})
    with pytest.raises(ValueError, match="invalid program id"):
        configs_from_args(parse("--program-id", "bad id"), {})
