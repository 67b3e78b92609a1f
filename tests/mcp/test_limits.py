"""Caps on what holds descriptors and tasks (issue 11, item 5): commands in flight, exposed ports and
live programs. Over a cap a call is refused with a message that says what to do; below it, accepted."""

from __future__ import annotations

import asyncio
import resource

from mcp import Client

from mcp_server.fdlimit import UNLIMITED_TARGET
from tests.docker._helpers import eventually

from .conftest import ServerFactory, call, call_error, create_sandbox, held_client, sh


async def test_every_command_in_flight_counts_toward_the_cap(make_server: ServerFactory) -> None:
    server = await make_server(max_processes_per_program=2)
    async with held_client(Client(server)) as client:
        sandbox_id = await create_sandbox(client)
        # A command the call waits for: in flight, though never registered as a background process.
        waited = asyncio.create_task(
            sh(client, sandbox_id, "touch /tmp/started; while [ ! -e /tmp/go ]; do sleep 0.1; done", timeout_s=120)
        )

        async def started() -> bool:
            return (await sh(client, sandbox_id, "test -e /tmp/started"))["exit_code"] == 0

        await eventually(started, what="the waited-for command started")
        background = await sh(client, sandbox_id, "sleep 300", background=True)

        for tool, arguments in (("sandbox_exec", {"command": "true"}), ("file_read", {"path": "/tmp/started"})):
            message = await call_error(client, tool, sandbox_id=sandbox_id, **arguments)
            assert "2 commands or file operations in flight" in message and "(2)" in message, message
            assert "process_kill" in message, message

        await call(client, "process_kill", process_id=background["process_id"])
        await sh(client, sandbox_id, "touch /tmp/go")  # below the cap again: accepted
        assert (await waited)["exit_code"] == 0
        await call(client, "file_read", sandbox_id=sandbox_id, path="/tmp/started")


async def test_exposed_ports_are_capped_per_program(make_server: ServerFactory) -> None:
    server = await make_server(max_ports_per_program=2)
    async with held_client(Client(server)) as client:
        first = await create_sandbox(client, network="internal")
        await call(client, "port_expose", sandbox_id=first, port=8001)
        second = await create_sandbox(client, network="internal")
        await call(client, "port_expose", sandbox_id=second, port=8002)

        message = await call_error(client, "port_expose", sandbox_id=second, port=8003)
        assert "2 ports exposed" in message and "(2)" in message and "sandbox_release" in message, message
        again = await call(client, "port_expose", sandbox_id=first, port=8001)  # the same forward: no new port
        assert again["container_port"] == 8001
        message = await call_error(client, "sandbox_create", template="base", network="internal", ports=[9000])
        assert "ports exposed" in message, message
        listed = await call(client, "sandbox_list")
        assert len(listed["sandboxes"]) == 2  # the refused create left no sandbox behind

        await call(client, "sandbox_release", sandbox_id=first)  # below the cap again: accepted
        await call(client, "port_expose", sandbox_id=second, port=8003)


async def test_live_programs_are_capped_per_server(make_server: ServerFactory) -> None:
    first = await make_server(max_programs=2, default_program_id="prog-a")
    second = await make_server(share_with=first, max_programs=2, default_program_id="prog-b")
    third = await make_server(share_with=first, max_programs=2, default_program_id="prog-c")
    async with (
        held_client(Client(first)) as a,
        held_client(Client(second)) as b,
        held_client(Client(third)) as c,
    ):
        await call(a, "sandbox_list")
        await call(b, "sandbox_list")
        message = await call_error(c, "sandbox_list")
        assert "already runs 2 programs" in message and "(2)" in message and "program_end" in message, message
        assert first.programs.programs() == ["prog-a", "prog-b"]  # the refused call created nothing

        await call(a, "program_end")  # below the cap again: accepted
        assert (await call(c, "sandbox_list"))["program_id"] == "prog-c"


async def test_a_server_raises_its_open_files_limit_to_the_hard_limit(make_server: ServerFactory) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, target), hard))
    try:
        await make_server()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (target, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard))
