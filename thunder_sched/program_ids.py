"""Which program an LLM request belongs to: explicit names first, then the ids agents already send.

Order (the first source that names a program wins; the explicit ones must agree with each other):
1. the body's `program_id` (OpenAI SDK `extra_body`; removed before forwarding),
2. the `X-Program-Id` header (also what `/p/{id}/v1/...` sets),
3. the configured rules, in order: `header:NAME` takes header NAME's value, `user-id:REGEX` takes the first
   non-empty group of REGEX searched in the body's `metadata.user_id` (Anthropic Messages API).

The default rules recognise Claude Code (checked against 2.1.197 with a capture of its requests): every
Messages request carries the session id in the header `X-Claude-Code-Session-Id` and inside
`metadata.user_id`, a JSON string `{"device_id": ..., "account_uuid": ..., "session_id": "<uuid>"}`
(older versions: `user_<hash>_account__session_<uuid>`). `claude --session-id <uuid>` sets it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from thunder_common.program_ids import PROGRAM_HEADER, is_header_name

CLAUDE_CODE_SESSION_HEADER = "x-claude-code-session-id"
# OpenHands (its server runtime) sends its conversation id to every HTTP MCP server on tool calls
# (openhands/mcp/client.py, connect_http), not on LLM requests: a rule here names MCP requests in `thunder serve`.
OPENHANDS_CONVERSATION_HEADER = "x-openhands-serverconversation-id"
CLAUDE_CODE_USER_ID_PATTERN = r'"session_id"\s*:\s*"([^"]+)"|_session_([0-9A-Za-z-]+)'
RULE_SYNTAX = "'header:NAME' or 'user-id:REGEX' (a regex with a group, searched in the body's metadata.user_id)"


class ProgramIdRule(BaseModel):
    """One way to find an agent's own run id in a request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["header", "user-id"]
    value: str  # the header name (lower case), or the regex

    @field_validator("value")
    @classmethod
    def _value(cls, value: str, info: Any) -> str:
        if info.data.get("source") == "header":
            if not is_header_name(value):
                raise ValueError(f"{value!r} is not an HTTP header name")
            if value.lower() == PROGRAM_HEADER:
                raise ValueError("X-Program-Id is always read first; a rule for it is redundant")
            return value.lower()
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        if pattern.groups < 1:
            raise ValueError(f"the regex {value!r} needs a group that captures the id")
        return value

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.value}"


DEFAULT_PROGRAM_ID_RULES: tuple[ProgramIdRule, ...] = (
    ProgramIdRule(source="header", value=CLAUDE_CODE_SESSION_HEADER),
    ProgramIdRule(source="user-id", value=CLAUDE_CODE_USER_ID_PATTERN),
    ProgramIdRule(source="header", value=OPENHANDS_CONVERSATION_HEADER),
)


def parse_program_id_rules(specs: Sequence[str]) -> tuple[ProgramIdRule, ...]:
    """The `--program-id-from` flags: none given keeps the defaults, 'none' alone turns every rule off."""
    if not specs:
        return DEFAULT_PROGRAM_ID_RULES
    if list(specs) == ["none"]:
        return ()
    rules = []
    for spec in specs:
        source, sep, value = spec.partition(":")
        if not sep or source not in ("header", "user-id") or not value:
            raise ValueError(f"--program-id-from wants {RULE_SYNTAX} (or 'none'), got {spec!r}")
        rules.append(ProgramIdRule(source=source, value=value))  # type: ignore[arg-type]
    return tuple(rules)


def header_names(rules: Sequence[ProgramIdRule]) -> tuple[str, ...]:
    """The header rules' names: what the MCP side can apply too (an MCP request has no metadata.user_id)."""
    return tuple(rule.value for rule in rules if rule.source == "header")


def _from_rule(rule: ProgramIdRule, body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    if rule.source == "header":
        return headers.get(rule.value) or None
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    match = re.search(rule.value, user_id)
    if match is None:
        return None
    return next((group for group in match.groups() if group), None)


def program_id_from_rules(
    rules: Sequence[ProgramIdRule], body: Mapping[str, Any], headers: Mapping[str, str]
) -> str | None:
    """The id the first matching rule finds, for a request that names no program explicitly."""
    return next((found for rule in rules if (found := _from_rule(rule, body, headers)) is not None), None)
