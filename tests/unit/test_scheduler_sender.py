"""The MCP server's delivery of tool events and program ends to a separately running scheduler.

The peer is either the scheduler's real app or the test's own tiny ASGI app (to script failures), reached
through httpx.ASGITransport; "the scheduler is down" is a real refused connection on a closed loopback port.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_server.cli import build_parser, configs_from_args, scheduler_link_from_args
from mcp_server.config import SchedulerLinkConfig
from mcp_server.delivery import Post, PostSender
from mcp_server.programs import EndNotice
from mcp_server.scheduler_link import SchedulerLink, events_path
from tests.unit.test_sched_proxy import A, FakeVllm, chat, proxy
from thunder_env import ToolEvent


@dataclass
class Peer:
    """Records every POST; answers `script`'s statuses first (then 202); waits for `gate` when set."""

    script: list[int] = field(default_factory=list)
    gate: asyncio.Event | None = None
    received: list[tuple[str, Any]] = field(default_factory=list)
    attempts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def transport(self) -> httpx.ASGITransport:
        async def post(request: Request) -> Response:
            self.attempts += 1
            self.arrived.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.script:
                return Response(status_code=self.script.pop(0))
            body = await request.body()
            self.received.append((request.url.path, (await request.json()) if body else None))
            return JSONResponse({"status": "accepted"}, status_code=202)

        app = Starlette(routes=[Route("/programs/{program_id}/{what}", post, methods=["POST"])])
        return httpx.ASGITransport(app=app)


def config(**overrides: Any) -> SchedulerLinkConfig:
    return SchedulerLinkConfig(url="http://sched", **{"drain_timeout_s": 10.0, **overrides})


class Sleeps:
    """The sender's backoff waits, recorded (and not waited)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_posts_keep_their_order_across_programs() -> None:
    peer = Peer()
    async with PostSender(config(), transport=peer.transport()) as sender:
        posts = [Post(events_path(f"p{i % 3}"), {"n": i}) for i in range(40)]
        assert all(sender.submit(post) for post in posts)
        await sender.flush()
    assert [body["n"] for _, body in peer.received] == list(range(40))
    assert sender.stats.sent == 40 and sender.stats.dropped == 0


async def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    peer = Peer(gate=asyncio.Event())
    async with PostSender(config(queue_size=3), transport=peer.transport()) as sender:
        assert sender.submit(Post("/programs/p/events", {"n": 0}))
        await peer.arrived.wait()  # the sender holds post 0 in flight; the queue is empty
        accepted = [sender.submit(Post("/programs/p/events", {"n": n})) for n in range(1, 7)]
        assert accepted == [True, True, True, False, False, False]
        assert sender.stats.dropped_full == 3 and sender.pending() == 3
        peer.gate.set()
        await sender.flush()
    assert [body["n"] for _, body in peer.received] == [0, 1, 2, 3]
    assert sender.stats.sent == 4


async def test_transient_failures_are_retried_with_backoff_in_order() -> None:
    peer = Peer(script=[503, 502, 429])
    sleeps = Sleeps()
    async with PostSender(config(max_attempts=5), transport=peer.transport(), sleep=sleeps) as sender:
        sender.submit(Post("/programs/p/events", {"n": 0}))
        sender.submit(Post("/programs/p/release"))
        await sender.flush()
    assert sleeps.delays == [0.1, 0.2, 0.4]  # doubling from backoff_initial_s
    assert peer.received == [("/programs/p/events", {"n": 0}), ("/programs/p/release", None)]
    assert sender.stats.retries == 3 and sender.stats.sent == 2 and sender.stats.dropped == 0


async def test_backoff_is_capped_and_a_post_is_dropped_after_its_last_attempt() -> None:
    peer = Peer(script=[500] * 6)
    sleeps = Sleeps()
    cfg = config(max_attempts=6, backoff_initial_s=0.5, backoff_max_s=1.5)
    async with PostSender(cfg, transport=peer.transport(), sleep=sleeps) as sender:
        sender.submit(Post("/programs/p/events", {"n": 0}))
        sender.submit(Post("/programs/p/events", {"n": 1}))  # the next one still goes out
        await sender.flush()
    assert sleeps.delays == [0.5, 1.0, 1.5, 1.5, 1.5]
    assert sender.stats.dropped_failed == 1 and peer.received == [("/programs/p/events", {"n": 1})]


async def test_a_refusal_is_not_retried() -> None:
    peer = Peer(script=[404, 422])
    sleeps = Sleeps()
    async with PostSender(config(), transport=peer.transport(), sleep=sleeps) as sender:
        for n in range(3):
            sender.submit(Post("/programs/p/release", {"n": n}))
        await sender.flush()
    assert sleeps.delays == [] and peer.attempts == 3
    assert sender.stats.rejected == 2 and sender.stats.sent == 1 and sender.stats.dropped == 0


async def test_a_scheduler_that_is_down_costs_drops_never_a_blocked_caller() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    cfg = SchedulerLinkConfig(url=f"http://127.0.0.1:{port}", max_attempts=3, queue_size=2, drain_timeout_s=10.0)
    async with PostSender(cfg, sleep=sleeps) as sender:
        results = [sender.submit(Post("/programs/p/events", {"n": n})) for n in range(5)]
        assert results == [True, True, False, False, False]  # submit returned at once, full queue dropped
        await sender.flush()
    assert sender.stats.dropped_full == 3 and sender.stats.dropped_failed == 2 and sender.stats.sent == 0
    assert sleeps.delays == [0.1, 0.2, 0.1, 0.2]


async def test_close_waits_for_queued_posts_then_drops_the_rest() -> None:
    peer = Peer()
    async with PostSender(config(), transport=peer.transport()) as sender:
        for n in range(5):
            sender.submit(Post("/programs/p/events", {"n": n}))
    assert len(peer.received) == 5  # drained on exit
    assert not sender.submit(Post("/programs/p/events", {"n": 9}))  # closed: refused, counted

    stuck = Peer(gate=asyncio.Event())
    async with PostSender(config(drain_timeout_s=0.0), transport=stuck.transport()) as sender:
        for n in range(3):
            sender.submit(Post("/programs/p/events", {"n": n}))
        await stuck.arrived.wait()
    assert sender.stats.dropped_failed == 3 and stuck.received == []  # two queued, one in flight


async def test_env_events_and_ends_reach_the_real_scheduler_app() -> None:
    """The env manager's own event JSON is what the scheduler's endpoint takes; ends become releases."""
    ends: list[str] = []  # the scheduler's program-end notifications (to the env side)
    async with proxy({A: FakeVllm()}, ends=ends) as (client, _, _sched):
        await client.post("/v1/chat/completions", json=chat("x", program_id="run-1"))
        transport = client._transport  # the scheduler app behind httpx.ASGITransport
        async with PostSender(config(), transport=transport) as sender:
            link = SchedulerLink(sender)
            start = ToolEvent("tool_start", "run-1", "sb-1", "exec", "c1", 1.0, command="pytest")
            await link.on_tool_event(start)
            await sender.flush()
            info = (await client.get("/programs/run-1")).json()
            assert info["tools_running"] == 1 and info["sandboxes"] == ["sb-1"] and info["last_tool"] == "exec"
            end = ToolEvent("tool_end", "run-1", "sb-1", "exec", "c1", 2.5, duration_s=1.5, exit_code=3)
            await link.on_tool_event(end)
            link.on_program_end(EndNotice("run-1", "the scheduler ended it", external=True))  # not echoed
            await sender.flush()
            info = (await client.get("/programs/run-1")).json()
            assert info["tools_running"] == 0 and info["last_exit_code"] == 3 and info["status"] != "terminated"
            link.on_program_end(EndNotice("run-1", "program_end"))
            await sender.flush()
            info = (await client.get("/programs/run-1")).json()
            assert info["status"] == "terminated" and info["terminated_reason"] == "released"
            await asyncio.sleep(0.05)  # the notifier runs in its own task
            assert ends == []  # ended on the env side already: no notification echoed back
        assert sender.stats.sent == 3 and sender.stats.rejected == 0
        await client.post("/v1/chat/completions", json=chat("x", program_id="run-2"))
        assert (await client.post("/programs/run-2/release")).status_code == 200
        await asyncio.sleep(0.05)
        assert ends == ["run-2"]  # a release by anyone else is notified
        mismatched = {**ToolEvent("tool_start", "other", None, "exec", "c2", 3.0).to_json()}
        response = await client.post("/programs/run-1/events", json=mismatched)
        assert response.status_code == 400 and "other" in response.text


def test_cli_flags_of_the_scheduler_coupling() -> None:
    def parse(*argv: str) -> Any:
        return build_parser().parse_args(list(argv))

    assert scheduler_link_from_args(parse(), {"THUNDER_SCHEDULER_TOKEN": "x"}) is None
    link = scheduler_link_from_args(parse("--scheduler-url", "http://s:8300/"), {"THUNDER_SCHEDULER_TOKEN": "tok"})
    assert link is not None and link.url == "http://s:8300" and link.token == "tok"
    assert "tok" not in repr(link)
    with pytest.raises(ValueError, match="--scheduler-url"):
        scheduler_link_from_args(parse("--scheduler-token", "t"), {})
    with pytest.raises(ValidationError, match="http"):
        scheduler_link_from_args(parse("--scheduler-url", "s:8300"), {})
    _, _, http, _ = configs_from_args(parse("--http", "--token", "s" * 20), {"THUNDER_NOTIFIER_TOKEN": "n" * 20})
    assert http is not None and http.notifier_token == "n" * 20
    with pytest.raises(ValidationError, match="notifier token must differ"):
        configs_from_args(parse("--http", "--token", "s" * 20, "--notifier-token", "s" * 20), {})
    with pytest.raises(ValueError, match="--http"):
        configs_from_args(parse("--notifier-token", "n" * 20), {})
