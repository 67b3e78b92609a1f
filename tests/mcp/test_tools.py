"""Every tool through the SDK's in-memory client, against real Docker sandboxes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from mcp import Client

from mcp_server import ThunderServer

from .conftest import ServerFactory, call, call_error, create_sandbox, leftovers, sh

TOOLS = {
    "sandbox_create", "sandbox_list", "sandbox_share", "sandbox_release", "sandbox_snapshot", "sandbox_fork",
    "port_expose", "program_end", "sandbox_exec", "process_output", "process_kill",
    "file_read", "file_write", "file_edit", "file_list",
}  # fmt: skip


async def test_tools_are_described_typed_and_annotated(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.output_schema is not None, tool.name
        assert tool.description and "\n    " not in tool.description, tool.name  # dedented docstring
        assert tool.annotations is not None and tool.annotations.open_world_hint is False
    for name in ("sandbox_list", "file_read", "file_list", "process_output"):
        assert tools[name].annotations.read_only_hint is True, name  # type: ignore[union-attr]
    for name in ("sandbox_exec", "sandbox_release", "program_end", "file_write", "file_edit", "process_kill"):
        assert tools[name].annotations.destructive_hint is True, name  # type: ignore[union-attr]
        assert tools[name].annotations.read_only_hint is False, name  # type: ignore[union-attr]
    assert "sandbox_id" in tools["sandbox_exec"].input_schema["required"]
    assert client.instructions and "program_end" in client.instructions


async def test_exec_files_and_list_in_one_sandbox(client: Client) -> None:
    sandbox_id = await create_sandbox(client, env={"GREETING": "hi"})
    listed = await call(client, "sandbox_list")
    assert [s["sandbox_id"] for s in listed["sandboxes"]] == [sandbox_id]
    assert listed["program_id"] == "prog-a"

    result = await sh(client, sandbox_id, 'echo "$GREETING $EXTRA"; echo oops >&2; exit 3', env={"EXTRA": "x"})
    assert (result["status"], result["exit_code"]) == ("exited", 3)
    assert (result["stdout"], result["stderr"], result["truncated"]) == ("hi x\n", "oops\n", False)

    written = await call(client, "file_write", sandbox_id=sandbox_id, path="src/app.py", content="a = 1\nb = 2\n")
    assert written == {"sandbox_id": sandbox_id, "path": "/workspace/src/app.py", "bytes_written": 12,
                       "created": True}  # fmt: skip
    assert (await sh(client, sandbox_id, "cat app.py", workdir="src"))["stdout"] == "a = 1\nb = 2\n"
    read = await call(client, "file_read", sandbox_id=sandbox_id, path="/workspace/src/app.py", offset=2)
    assert (read["content"], read["start_line"], read["end_line"], read["total_lines"]) == ("b = 2\n", 2, 2, 2)
    assert read["truncated"] is False and read["next_offset"] is None

    listing = await call(client, "file_list", sandbox_id=sandbox_id, path="src")
    assert [(e["name"], e["kind"], e["size"]) for e in listing["entries"]] == [("app.py", "file", 12)]
    await call(client, "file_write", sandbox_id=sandbox_id, path="/tmp/notes.txt", content="x")  # /tmp is allowed
    assert (await call(client, "file_list", sandbox_id=sandbox_id, path="/tmp"))["total_entries"] >= 1


async def test_file_read_pages_through_long_files(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    await sh(client, sandbox_id, "seq 1 5000 > numbers.txt")
    first = await call(client, "file_read", sandbox_id=sandbox_id, path="numbers.txt")
    assert (first["start_line"], first["end_line"], first["total_lines"]) == (1, 2000, 5000)
    assert first["truncated"] is True and first["next_offset"] == 2001
    last = await call(client, "file_read", sandbox_id=sandbox_id, path="numbers.txt", offset=4999, limit=10)
    assert last["content"] == "4999\n5000\n" and last["truncated"] is False


async def test_file_edit_replaces_unique_text_and_keeps_the_mode(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    script = "#!/bin/sh\necho one\necho two\n"
    await call(client, "file_write", sandbox_id=sandbox_id, path="run.sh", content=script, mode="755")
    edited = await call(client, "file_edit", sandbox_id=sandbox_id, path="run.sh", old_text="one", new_text="1")
    assert edited["replacements"] == 1
    result = await sh(client, sandbox_id, "./run.sh && stat -c %a run.sh")
    assert result["stdout"] == "1\ntwo\n755\n"

    missing = await call_error(client, "file_edit", sandbox_id=sandbox_id, path="run.sh", old_text="three",
                               new_text="3")  # fmt: skip
    assert "not found" in missing and "file_read" in missing
    ambiguous = await call_error(client, "file_edit", sandbox_id=sandbox_id, path="run.sh", old_text="echo",
                                 new_text="printf")  # fmt: skip
    assert "occurs 2 times" in ambiguous and "replace_all" in ambiguous
    assert (await sh(client, sandbox_id, "cat run.sh"))["stdout"] == "#!/bin/sh\necho 1\necho two\n"  # unchanged
    everywhere = await call(client, "file_edit", sandbox_id=sandbox_id, path="run.sh", old_text="echo",
                            new_text="echo -n", replace_all=True)  # fmt: skip
    assert everywhere["replacements"] == 2


async def test_long_output_keeps_head_and_tail_with_total_size(make_server: ServerFactory) -> None:
    server = await make_server(output_limit_bytes=2000)
    async with Client(server) as client:
        sandbox_id = await create_sandbox(client)
        result = await sh(client, sandbox_id, "seq 1 100000")
    expected_total = sum(len(f"{n}\n") for n in range(1, 100001))
    assert result["truncated"] is True and result["stdout_bytes"] == expected_total
    assert result["stdout"].startswith("1\n2\n3\n") and result["stdout"].endswith("99999\n100000\n")
    assert "truncated" in result["stdout"] and len(result["stdout"]) < 2100


async def test_long_commands_report_progress(make_server: ServerFactory) -> None:
    server = await make_server(progress_interval_s=0.2)
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with Client(server) as client:
        sandbox_id = await create_sandbox(client)
        result = await client.call_tool(
            "sandbox_exec", {"sandbox_id": sandbox_id, "command": "sleep 1.2; echo done"}, progress_callback=on_progress
        )
    assert result.structured_content and result.structured_content["stdout"] == "done\n"
    assert len(progress) >= 3
    assert [v for v, _ in progress] == sorted(v for v, _ in progress)
    assert all(message and "running for" in message for _, message in progress)


async def test_command_outliving_its_timeout_becomes_a_background_process(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    slow = await sh(client, sandbox_id, "echo started; sleep 1.5; echo finished", timeout_s=0.5)
    assert slow["status"] == "running" and slow["process_id"].startswith("proc-")
    assert slow["stdout"] == "started\n"
    done = await call(client, "process_output", process_id=slow["process_id"], wait_s=10)
    assert (done["status"], done["exit_code"], done["stdout"]) == ("exited", 0, "started\nfinished\n")
    again = await call(client, "process_output", process_id=slow["process_id"],
                       stdout_offset=done["next_stdout_offset"])  # fmt: skip
    assert again["stdout"] == "" and again["next_stdout_offset"] == done["next_stdout_offset"]


async def test_background_processes_are_polled_and_killed(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    started = await sh(client, sandbox_id, "for i in 1 2 3; do echo tick $i; done; exec sleep 300", background=True)
    assert started["status"] == "running"
    process_id = started["process_id"]
    polled: dict[str, Any] = {}
    for _ in range(50):
        polled = await call(client, "process_output", process_id=process_id)
        if polled["stdout"].count("tick") == 3:
            break
        await asyncio.sleep(0.1)
    assert polled["stdout"] == "tick 1\ntick 2\ntick 3\n" and polled["status"] == "running"
    assert process_id in (await call(client, "sandbox_list"))["sandboxes"][0]["running_processes"]
    assert "sleep 300" in (await sh(client, sandbox_id, "ps -o args"))["stdout"]

    killed = await call(client, "process_kill", process_id=process_id)
    assert killed["status"] == "killed" and killed["stdout"].endswith("tick 3\n")
    assert "sleep 300" not in (await sh(client, sandbox_id, "ps -o args"))["stdout"]
    assert (await call(client, "process_kill", process_id=process_id))["status"] == "killed"  # idempotent


async def test_port_expose_reaches_a_service_in_the_sandbox(client: Client) -> None:
    sandbox_id = await create_sandbox(client, network="internal")
    await call(client, "file_write", sandbox_id=sandbox_id, path="/tmp/www/index.html", content="hello from sandbox")
    await sh(client, sandbox_id, "httpd -f -p 8080 -h /tmp/www", background=True)
    exposed = await call(client, "port_expose", sandbox_id=sandbox_id, port=8080)
    assert exposed["host"] == "127.0.0.1" and exposed["url"].startswith("http://127.0.0.1:")
    body = ""
    async with httpx.AsyncClient() as http:
        for _ in range(50):
            try:
                body = (await http.get(exposed["url"] + "/index.html")).text
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    assert body == "hello from sandbox"
    ports = (await call(client, "sandbox_list"))["sandboxes"][0]["ports"]
    assert [p["container_port"] for p in ports] == [8080]
    assert "network" in await call_error(client, "port_expose", sandbox_id=await create_sandbox(client), port=80)


async def test_share_gives_another_program_its_own_lease(make_server: ServerFactory) -> None:
    server_a = await make_server()
    server_b = await make_server(share_with=server_a, default_program_id="prog-b")
    async with Client(server_a) as a, Client(server_b) as b:
        sandbox_id = await create_sandbox(a)
        await sh(a, sandbox_id, "echo shared > note")
        assert "held by another program" in await call_error(b, "file_read", sandbox_id=sandbox_id, path="note")
        shared = await call(a, "sandbox_share", sandbox_id=sandbox_id, program_id="prog-b")
        assert shared["already_shared"] is False
        assert (await call(a, "sandbox_share", sandbox_id=sandbox_id, program_id="prog-b"))["already_shared"]
        assert (await call(b, "file_read", sandbox_id=sandbox_id, path="note"))["content"] == "shared\n"
        assert (await call(b, "sandbox_list"))["sandboxes"][0]["lease_count"] == 2

        released = await call(a, "sandbox_release", sandbox_id=sandbox_id)
        assert released["destroyed"] is False  # prog-b still holds it
        assert (await sh(b, sandbox_id, "cat note"))["stdout"] == "shared\n"
        assert "held by another program" in await call_error(a, "sandbox_exec", sandbox_id=sandbox_id, command="true")
        assert (await call(b, "sandbox_release", sandbox_id=sandbox_id))["destroyed"] is True
    assert server_a.manager.sandboxes() == []


async def test_snapshot_and_fork(client: Client, server: ThunderServer) -> None:
    sandbox_id = await create_sandbox(client)
    await call(client, "file_write", sandbox_id=sandbox_id, path="state.txt", content="v1")
    snapshot = await call(client, "sandbox_snapshot", sandbox_id=sandbox_id)
    await call(client, "file_write", sandbox_id=sandbox_id, path="state.txt", content="v2")
    forked = await call(client, "sandbox_fork", snapshot_id=snapshot["snapshot_id"], count=2)
    ids = [s["sandbox_id"] for s in forked["sandboxes"]]
    assert len(set(ids)) == 2 and sandbox_id not in ids
    for fork_id in ids:
        assert (await call(client, "file_read", sandbox_id=fork_id, path="state.txt"))["content"] == "v1"
    created = await call(client, "sandbox_create", snapshot_id=snapshot["snapshot_id"])
    assert (await call(client, "file_read", sandbox_id=created["sandbox_id"], path="state.txt"))["content"] == "v1"
    assert "no snapshot" in await call_error(client, "sandbox_fork", snapshot_id="snap-unknown")
    again = await call(client, "sandbox_fork", sandbox_id=sandbox_id)  # snapshot now, then fork
    fork_id = again["sandboxes"][0]["sandbox_id"]
    assert (await call(client, "file_read", sandbox_id=fork_id, path="state.txt"))["content"] == "v2"
    assert len(server.manager.provisioner.snapshots()) == 2
    await call(client, "program_end")
    assert server.manager.provisioner.snapshots() == [] and server.manager.sandboxes() == []


async def test_program_end_reclaims_everything(make_server: ServerFactory) -> None:
    server = await make_server()
    async with Client(server) as client:
        first = await create_sandbox(client)
        await create_sandbox(client)
        await sh(client, first, "sleep 300", background=True)
        ended = await call(client, "program_end")
        assert (ended["sandboxes_released"], ended["sandboxes_destroyed"], ended["processes_killed"]) == (2, 2, 1)
        assert "has ended" in await call_error(client, "sandbox_list")
    assert server.manager.sandboxes() == []
    assert await leftovers(server.manager.backend, server.manager.config.namespace) == []  # type: ignore[arg-type]


async def test_setup_steps_are_built_once_and_reused(client: Client, server: ThunderServer) -> None:
    steps = ["echo built > /workspace/marker", "mkdir -p /workspace/deps"]
    first = await create_sandbox(client, setup=steps)
    second = await create_sandbox(client, setup=steps)
    for sandbox_id in (first, second):
        assert (await call(client, "file_read", sandbox_id=sandbox_id, path="marker"))["content"] == "built\n"
    assert server.manager.provisioner.template_builds() == 1
    failing = await call_error(client, "sandbox_create", template="base", setup=["exit 7"])
    assert "setup step 1" in failing
