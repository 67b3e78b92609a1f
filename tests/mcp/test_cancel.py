"""A cancelled call kills its command inside the sandbox (checked with ps in the sandbox)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from mcp import Client

from .conftest import ServerFactory, create_sandbox, sh


async def processes(client: Client, sandbox_id: str) -> str:
    return str((await sh(client, sandbox_id, "ps -o args"))["stdout"])


async def wait_for_ps(client: Client, sandbox_id: str, needle: str, present: bool) -> None:
    for _ in range(100):
        if (needle in await processes(client, sandbox_id)) == present:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{needle!r} {'never appeared' if present else 'still runs'} in sandbox {sandbox_id}")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelling_a_call_kills_its_process_tree(make_server: ServerFactory, mode: str) -> None:
    server = await make_server()
    async with Client(server, mode=mode) as client:
        sandbox_id = await create_sandbox(client)
        # A child and a grandchild: the whole tree must go, not just the shell.
        command = "sh -c 'sleep 301 & sleep 302; wait'"
        call = asyncio.create_task(client.call_tool("sandbox_exec", {"sandbox_id": sandbox_id, "command": command}))
        await wait_for_ps(client, sandbox_id, "sleep 302", present=True)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await wait_for_ps(client, sandbox_id, "sleep 30", present=False)
        # The sandbox itself is fine and the program can go on.
        assert (await sh(client, sandbox_id, "echo alive"))["stdout"] == "alive\n"
        assert (await client.call_tool("sandbox_list", {})).structured_content["sandboxes"][0][  # type: ignore[index]
            "running_processes"
        ] == []
