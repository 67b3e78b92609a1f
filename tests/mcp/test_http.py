"""Streamable HTTP under uvicorn: the token, program binding, sessions, cancellation and load."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.routing import Mount

from mcp_server import HttpConfig, create_http_app, http_lifespan

from .conftest import PROGRAM_TOKEN, TOKEN, HttpTarget, ServerFactory, call, call_error, create_sandbox, sh
from .test_cancel import wait_for_ps

INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}  # fmt: skip
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def raw_post(url: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})


async def test_requests_without_the_token_get_401(http_target: HttpTarget) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                    {"Authorization": "Basic " + TOKEN}):  # fmt: skip
        for url in (http_target.url(), http_target.url("prog-x")):
            response = await raw_post(url, headers)
            assert response.status_code == 401, (headers, url)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in response.json()["message"]
    assert (await raw_post(http_target.url(), {"Authorization": f"Bearer {TOKEN}"})).status_code == 200
    with pytest.raises(ExceptionGroup) as failure:  # the SDK client cannot connect without the token
        async with http_target.client(http_target.url("prog-x"), {"Authorization": ""}) as client:
            await client.list_tools()
    assert failure.group_contains(MCPError)


async def test_program_binding_errors_and_host_check(http_target: HttpTarget) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    conflict = await raw_post(http_target.url("prog-x"), {**auth, "X-Program-Id": "prog-y"})
    assert conflict.status_code == 400 and "X-Program-Id" in conflict.json()["message"]
    malformed = await raw_post(http_target.base_url + "/p/bad%20id/mcp", auth)
    assert malformed.status_code == 400 and "invalid program id" in malformed.json()["message"]
    scoped = await raw_post(http_target.url("prog-x"), {"Authorization": f"Bearer {PROGRAM_TOKEN}"})
    assert scoped.status_code == 403 and "prog-tok" in scoped.json()["message"]
    # The SDK's DNS-rebinding protection stays on behind the token.
    rebound = await raw_post(http_target.url(), {**auth, "Host": "attacker.invalid"})
    assert rebound.status_code == 421
    cross_site = await raw_post(http_target.url(), {**auth, "Origin": "http://attacker.invalid"})
    assert cross_site.status_code == 403


async def test_programs_by_path_header_and_token(http_target: HttpTarget) -> None:
    bindings = {
        "by-path": (http_target.url("by-path"), {}),
        "by-header": (http_target.url(), {"X-Program-Id": "by-header"}),
        "prog-tok": (http_target.url(), {"Authorization": f"Bearer {PROGRAM_TOKEN}"}),
    }
    sandboxes = {}
    for program_id, (url, headers) in bindings.items():
        async with http_target.client(url, headers) as client:
            sandboxes[program_id] = await create_sandbox(client)
            assert (await call(client, "sandbox_list"))["program_id"] == program_id
    # The same program across connections sees its sandbox; another program is refused.
    async with http_target.client(http_target.url("by-path")) as client:
        assert (await sh(client, sandboxes["by-path"], "echo again"))["stdout"] == "again\n"
        assert "held by another program" in await call_error(
            client, "sandbox_exec", sandbox_id=sandboxes["by-header"], command="true"
        )
        await call(client, "program_end")
    assert {info.sandbox_id for info in http_target.server.manager.sandboxes()} == {
        sandboxes["by-header"],
        sandboxes["prog-tok"],
    }


async def test_unbound_sessions_are_programs_that_end_with_the_session(http_target: HttpTarget) -> None:
    # Handshake-era clients (Claude Code...) have MCP sessions: each session is a program of its own.
    async with http_target.client(http_target.url(), mode="legacy") as client:
        sandbox_id = await create_sandbox(client)
        program_id = (await call(client, "sandbox_list"))["program_id"]
        assert program_id.startswith("session-")
        assert http_target.server.programs.get(program_id) is not None
    # Closing the client deletes its session, which ends the program and frees its sandbox.
    assert http_target.server.programs.get(program_id) is None
    assert sandbox_id not in {info.sandbox_id for info in http_target.server.manager.sandboxes()}
    # Sessionless (2026) clients must name their program.
    async with http_target.client(http_target.url()) as client:
        assert "/p/<program_id>/mcp" in await call_error(client, "sandbox_list")


async def test_a_session_answers_only_the_token_that_opened_it(http_target: HttpTarget) -> None:
    # A leaked session id is not enough: with another token it neither attaches to the session nor ends it.
    owner, intruder = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Bearer {PROGRAM_TOKEN}"}
    opened = await raw_post(http_target.url(), owner)
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}

    async def send(method: str, headers: dict[str, str]) -> httpx.Response:
        session_headers = {**MCP_HEADERS, **headers, "Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-06-18"}
        async with httpx.AsyncClient() as http:
            if method == "DELETE":
                return await http.delete(http_target.url(), headers=session_headers)
            return await http.post(http_target.url(), json=ping, headers=session_headers)

    assert (await send("POST", owner)).status_code == 200
    for method in ("POST", "DELETE"):
        refused = await send(method, intruder)
        assert refused.status_code == 404 and "Session not found" in refused.text, (method, refused.text)
    assert (await send("POST", owner)).status_code == 200  # still there, still the owner's
    assert (await send("DELETE", owner)).status_code < 300


async def test_sandbox_share_only_toward_programs_the_caller_may_name(http_target: HttpTarget) -> None:
    programs = http_target.server.programs
    async with http_target.client(http_target.url("sharer")) as sharer:
        sandbox_id = await create_sandbox(sharer)
        # An id nobody configured and no call made: refused, and no state (nor quota) made for it.
        message = await call_error(sharer, "sandbox_share", sandbox_id=sandbox_id, program_id="made-up")
        assert "cannot share with program 'made-up'" in message and "same token" in message
        assert programs.get("made-up") is None
        # A program this token already called as: allowed.
        async with http_target.client(http_target.url("known")) as known:
            await call(known, "sandbox_list")
            await call(sharer, "sandbox_share", sandbox_id=sandbox_id, program_id="known")
            assert (await call(known, "sandbox_list"))["sandboxes"][0]["sandbox_id"] == sandbox_id
            await call(known, "program_end")
        # A configured program (it has a program token): allowed before it ever called.
        await call(sharer, "sandbox_share", sandbox_id=sandbox_id, program_id="prog-tok")
    # Another token may not name the programs of this one.
    async with http_target.client(http_target.url(), {"Authorization": f"Bearer {PROGRAM_TOKEN}"}) as scoped:
        (held,) = (await call(scoped, "sandbox_list"))["sandboxes"]
        message = await call_error(scoped, "sandbox_share", sandbox_id=held["sandbox_id"], program_id="sharer")
        assert "cannot share with program 'sharer'" in message
        await call(scoped, "program_end")
    async with http_target.client(http_target.url("sharer")) as sharer:
        await call(sharer, "program_end")


async def test_cancellation_over_http_kills_the_command(http_target: HttpTarget) -> None:
    async with http_target.client(http_target.url("cancel-http"), mode="legacy") as client:
        sandbox_id = await create_sandbox(client)
        call_task = asyncio.create_task(
            client.call_tool("sandbox_exec", {"sandbox_id": sandbox_id, "command": "sleep 303"})
        )
        await wait_for_ps(client, sandbox_id, "sleep 303", present=True)
        call_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call_task
        await wait_for_ps(client, sandbox_id, "sleep 303", present=False)


@pytest.mark.timeout(240)
async def test_ten_concurrent_clients_make_a_hundred_calls_each(http_target: HttpTarget) -> None:
    async def agent(index: int) -> int:
        program_id = f"load-{index}"
        async with http_target.client(http_target.url(program_id)) as client:
            sandbox_id = await create_sandbox(client)
            await call(client, "file_write", sandbox_id=sandbox_id, path="id.txt", content=f"{index}\n")
            done = 0
            for n in range(100):
                if n % 4 == 0:
                    result = await sh(client, sandbox_id, f"echo {index}-{n}")
                    assert result["stdout"] == f"{index}-{n}\n"
                elif n % 4 == 1:
                    assert (await call(client, "file_read", sandbox_id=sandbox_id, path="id.txt"))["content"] == (
                        f"{index}\n"
                    )
                else:
                    listed = await call(client, "sandbox_list")
                    assert listed["program_id"] == program_id
                    assert [s["sandbox_id"] for s in listed["sandboxes"]] == [sandbox_id]
                done += 1
            await call(client, "program_end")
            return done

    started = time.monotonic()
    async with asyncio.timeout(200):
        counts = await asyncio.gather(*(agent(i) for i in range(10)))
    assert counts == [100] * 10
    assert http_target.server.manager.sandboxes() == []
    print(f"1000 calls from 10 clients in {time.monotonic() - started:.1f} s")


async def test_large_file_writes_fit_through_http(http_target: HttpTarget) -> None:
    content = ("x" * 1023 + "\n") * (5 << 10)  # 5 MiB, over the SDK's default 4 MiB body limit
    async with http_target.client(http_target.url("big-files")) as client:
        sandbox_id = await create_sandbox(client)
        written = await call(client, "file_write", sandbox_id=sandbox_id, path="big.txt", content=content)
        assert written["bytes_written"] == 5 << 20
        assert (await sh(client, sandbox_id, "wc -c < big.txt"))["stdout"].strip() == str(5 << 20)
        too_big = "y" * (9 << 20)
        assert "over the 8388608-byte limit" in await call_error(
            client, "file_write", sandbox_id=sandbox_id, path="huge.txt", content=too_big
        )


async def test_the_app_mounts_under_a_prefix_with_its_lifespan(make_server: ServerFactory) -> None:
    server = await make_server(default_program_id=None)
    inner = create_http_app(server, HttpConfig(token=TOKEN))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with http_lifespan(inner):  # a mounted app's lifespan is the parent's to run
            yield

    parent = Starlette(routes=[Mount("/thunder", app=inner)], lifespan=lifespan)
    uvicorn_server = uvicorn.Server(uvicorn.Config(parent, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(uvicorn_server.serve())
    try:
        while not uvicorn_server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
        target = HttpTarget(f"http://127.0.0.1:{port}/thunder", server)
        assert (await raw_post(target.url(), {})).status_code == 401
        async with target.client(target.url("mounted-prog")) as client:
            assert (await call(client, "sandbox_list"))["program_id"] == "mounted-prog"
    finally:
        uvicorn_server.should_exit = True
        await serving
    assert server.programs.get("mounted-prog") is None  # the lifespan's shutdown ended it
