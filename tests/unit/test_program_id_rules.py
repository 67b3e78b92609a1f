"""Agent-native program ids: the rules that find a program in a request naming none explicitly, on the
scheduler's side (LLM requests) and on the MCP side (the auth middleware's binding).

The Claude Code request parts below are what Claude Code 2.1.197 sent to a loopback listener (`claude -p`):
the header `X-Claude-Code-Session-Id` and `metadata.user_id`, a JSON string holding the same session id.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from mcp_server.auth import BearerAuthMiddleware
from mcp_server.binding import SCOPE_STATE_KEY
from mcp_server.cli import build_parser as mcp_parser
from mcp_server.cli import configs_from_args
from mcp_server.config import HttpConfig
from tests.unit.test_sched_messages import FakeMessagesVllm, message
from tests.unit.test_sched_proxy import A, proxy
from thunder_sched.cli import build_parser as sched_parser
from thunder_sched.cli import config_from_args
from thunder_sched.errors import BadRequestError
from thunder_sched.program_ids import DEFAULT_PROGRAM_ID_RULES, header_names, parse_program_id_rules
from thunder_sched.proxy import take_program_id

SESSION = "0bb18f75-5798-4b9e-a9bc-b68d6076aec6"
DEVICE = "79bd2b9292b1b72f67651848e699b8ce2c18575c9e5ca66c9853ef77a8480c4f"
CLAUDE_USER_ID = json.dumps({"device_id": DEVICE, "account_uuid": "", "session_id": SESSION}, separators=(",", ":"))
TOKEN = "t" * 32


def claude_body(**kw: Any) -> dict[str, Any]:
    return message("hi", metadata={"user_id": CLAUDE_USER_ID}, **kw)


def test_claude_codes_session_id_names_the_program_by_default_from_its_header_or_its_metadata() -> None:
    rules = DEFAULT_PROGRAM_ID_RULES
    assert take_program_id(claude_body(), {"x-claude-code-session-id": SESSION}, rules) == SESSION
    assert take_program_id(claude_body(), {}, rules) == SESSION  # metadata.user_id alone
    legacy = message("hi", metadata={"user_id": f"user_{DEVICE}_account__session_{SESSION}"})
    assert take_program_id(legacy, {}, rules) == SESSION
    # Nothing to go by: no program (an ephemeral one in the scheduler), as before.
    assert take_program_id(message("hi", metadata={"user_id": "someone"}), {}, rules) is None
    assert take_program_id(message("hi", metadata="not an object"), {}, rules) is None
    assert take_program_id(claude_body(), {"x-claude-code-session-id": SESSION}, ()) is None


def test_explicit_names_come_before_the_rules_and_still_must_agree() -> None:
    rules = DEFAULT_PROGRAM_ID_RULES
    headers = {"x-claude-code-session-id": SESSION}
    body = claude_body(program_id="run-1")
    assert take_program_id(body, headers, rules) == "run-1" and "program_id" not in body
    assert take_program_id(claude_body(), {**headers, "x-program-id": "run-2"}, rules) == "run-2"
    with pytest.raises(BadRequestError, match="differs"):
        take_program_id(claude_body(program_id="a"), {"x-program-id": "b"}, rules)
    with pytest.raises(BadRequestError, match="invalid program id"):
        take_program_id(claude_body(), {"x-claude-code-session-id": " "}, rules)


def test_configured_rules_apply_in_order_and_replace_the_defaults() -> None:
    rules = parse_program_id_rules(["header:X-Run-Id", r"user-id:run=(\w+)"])
    assert header_names(rules) == ("x-run-id",)
    body = message("hi", metadata={"user_id": "team-a run=r42"})
    assert take_program_id(dict(body), {"x-run-id": "from-header"}, rules) == "from-header"
    assert take_program_id(dict(body), {}, rules) == "r42"
    # The defaults are gone: Claude Code's header alone names nothing now.
    assert take_program_id(message("hi"), {"x-claude-code-session-id": SESSION}, rules) is None
    assert parse_program_id_rules([]) == DEFAULT_PROGRAM_ID_RULES
    assert parse_program_id_rules(["none"]) == ()


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("X-Run-Id", "--program-id-from wants"),
        ("cookie:x", "--program-id-from wants"),
        ("header:", "--program-id-from wants"),
        ("header:bad header", "not an HTTP header name"),
        ("header:X-Program-Id", "always read first"),
        ("user-id:(unclosed", "invalid regex"),
        ("user-id:no-group", "needs a group"),
    ],
)
def test_malformed_rules_are_refused_with_the_reason(spec: str, reason: str) -> None:
    with pytest.raises((ValueError, ValidationError), match=reason):
        parse_program_id_rules([spec])


def test_the_scheduler_cli_builds_the_rules() -> None:
    def rules(*flags: str) -> Any:
        return config_from_args(sched_parser().parse_args(["--backend", A, *flags])).program_id_rules

    assert rules() == DEFAULT_PROGRAM_ID_RULES
    assert rules("--program-id-from", "none") == ()
    assert [r.spec for r in rules("--program-id-from", "header:X-Run-Id")] == ["header:x-run-id"]


async def test_a_claude_code_request_lands_in_its_session_program_with_exact_tokens() -> None:
    fake = FakeMessagesVllm()
    async with proxy({A: fake}) as (client, _, _):
        r = await client.post(
            "/v1/messages?beta=true", json=claude_body(), headers={"X-Claude-Code-Session-Id": SESSION}
        )
        assert r.status_code == 200, r.text
        info = (await client.get(f"/programs/{SESSION}")).json()
        assert info["tokens_exact"] is True and info["steps"] == 1
        assert info["tokens"] == fake.prompt_tokens(fake.bodies[-1]) + 4
        assert fake.bodies[-1]["metadata"] == {"user_id": CLAUDE_USER_ID}  # forwarded untouched
        # The same request from a scheduler with no rules is an ephemeral program: nothing stays.
    async with proxy({A: FakeMessagesVllm()}, program_id_rules=()) as (client, _, _):
        r = await client.post("/v1/messages", json=claude_body(), headers={"X-Claude-Code-Session-Id": SESSION})
        assert r.status_code == 200, r.text
        assert (await client.get(f"/programs/{SESSION}")).status_code == 404


async def _bound_program(middleware_kw: dict[str, Any], path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """The program the MCP auth middleware binds a request to (status, program or None)."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["program"] = (scope.get("state") or {}).get(SCOPE_STATE_KEY)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    asgi = BearerAuthMiddleware(app, tokens={TOKEN: None, "p" * 32: "pinned"}, **middleware_kw)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://mcp") as client:
        r = await client.post(path, headers={"Authorization": f"Bearer {TOKEN}", **headers})
    return r.status_code, seen.get("program")


async def test_the_mcp_side_applies_the_header_rules_after_path_and_x_program_id() -> None:
    kw = {"program_headers": HttpConfig(token=TOKEN).program_headers}  # the default: Claude Code's header
    claude = {"X-Claude-Code-Session-Id": SESSION}
    assert await _bound_program(kw, "/mcp", claude) == (200, SESSION)
    assert await _bound_program(kw, "/p/run-1/mcp", claude) == (200, "run-1")
    assert await _bound_program(kw, "/mcp", {**claude, "X-Program-Id": "run-2"}) == (200, "run-2")
    assert await _bound_program({}, "/mcp", claude) == (200, None)  # no rule: the MCP session's program
    status, _ = await _bound_program(kw, "/mcp", {"X-Claude-Code-Session-Id": "../etc"})
    assert status == 400  # a found id is validated like a named one
    # OpenHands sends its conversation id on its MCP requests: each conversation's tools are one program.
    openhands = {"X-OpenHands-ServerConversation-ID": "8f2c6a0e1b3d4f5a9c7e0d1b2a3c4d5e"}
    assert await _bound_program(kw, "/mcp", openhands) == (200, openhands["X-OpenHands-ServerConversation-ID"])


def test_the_mcp_cli_sets_the_program_headers() -> None:
    def headers(*flags: str) -> tuple[str, ...]:
        args = mcp_parser().parse_args(["--http", "--token", TOKEN, *flags])
        http = configs_from_args(args, {})[2]
        assert http is not None
        return http.program_headers

    assert headers() == ("x-claude-code-session-id", "x-openhands-serverconversation-id")
    assert headers("--program-header", "X-Run-Id", "--program-header", "X-Other") == ("x-run-id", "x-other")
    assert headers("--program-header", "none") == ()
    with pytest.raises(ValidationError, match="not an HTTP header name"):
        headers("--program-header", "bad header")
