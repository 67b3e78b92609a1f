"""Program lifecycle: idle timeout, tool events with the program id, calls after the end."""

from __future__ import annotations

import asyncio

from mcp import Client

from thunder_env import ToolEvent

from .conftest import ServerFactory, call, call_error, create_sandbox, sh


async def test_idle_programs_are_ended_but_busy_ones_are_not(make_server: ServerFactory) -> None:
    server = await make_server(program_idle_timeout_s=1.0, reaper_interval_s=0.2)
    async with Client(server) as client:
        sandbox_id = await create_sandbox(client)
        # A call running longer than the idle timeout keeps its program alive.
        assert (await sh(client, sandbox_id, "sleep 1.6; echo done"))["stdout"] == "done\n"
        assert server.programs.get("prog-a") is not None
        for _ in range(50):
            if server.programs.get("prog-a") is None:
                break
            await asyncio.sleep(0.1)
        assert server.programs.get("prog-a") is None
        assert server.manager.sandboxes() == []
        message = await call_error(client, "sandbox_list")
        assert "no tool call for more than 1 s" in message and "new program" in message


async def test_tool_calls_emit_tool_events_with_the_program_id(make_server: ServerFactory) -> None:
    server = await make_server(default_program_id="events-prog")
    events: list[ToolEvent] = []

    async def record(event: ToolEvent) -> None:
        events.append(event)

    server.manager.add_listener(record)
    async with Client(server) as client:
        sandbox_id = await create_sandbox(client)
        await sh(client, sandbox_id, "true")
        await call(client, "file_write", sandbox_id=sandbox_id, path="f.txt", content="x")
    exec_events = [(e.kind, e.tool) for e in events if e.tool == "sandbox_exec"]
    assert exec_events == [("tool_start", "sandbox_exec"), ("tool_end", "sandbox_exec")]
    assert {e.tool for e in events} >= {"sandbox_exec", "file_write"}
    assert {e.program_id for e in events} == {"events-prog"}
    assert all(e.sandbox_id == sandbox_id for e in events)


async def test_ended_programs_are_remembered_within_a_bound(make_server: ServerFactory) -> None:
    server = await make_server(ended_programs_remembered=2)
    for program_id in ("old-1", "old-2", "old-3"):
        await server.programs.end(program_id, "test")
    assert server.programs.get("old-1") is None
    server.programs.state("old-1")  # forgotten (oldest beyond the bound): may start again
    for program_id in ("old-2", "old-3"):
        try:
            server.programs.state(program_id)
        except Exception as exc:
            assert "has ended (test)" in str(exc)
        else:
            raise AssertionError(f"{program_id} should be refused")
