"""Tool events from the environment manager (in-process objects or the HTTP endpoint's body)."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class ToolEventLike(Protocol):
    """What the in-process listener accepts: any object with these attributes."""

    kind: str
    program_id: str
    sandbox_id: str | None
    tool: str | None
    duration_s: float | None
    exit_code: int | None
    time: float | None
    # optional: `command` (the command's first word) is read with getattr


class ToolEventBody(BaseModel):
    """Body of POST /programs/{id}/events; the program id comes from the path.

    It is the env manager's own JSON form of an event (`thunder_env.ToolEvent.to_json()`), so a remote env
    side posts its events as they are: `program_id`, when present, must name the path's program, and
    `call_id` is informational.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tool_start", "tool_end"]
    program_id: str | None = Field(None, max_length=256, description="if given, the path's program id")
    call_id: str | None = Field(None, max_length=256, description="the sender's id of the call; informational")
    sandbox_id: str | None = Field(None, max_length=256)
    tool: str | None = Field(None, max_length=256)
    command: str | None = Field(None, max_length=4096, description="the command line the tool runs")
    duration_s: float | None = Field(None, ge=0)
    exit_code: int | None = None
    time: float | None = Field(None, description="sender's wall-clock time; informational")


class ToolEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["tool_start", "tool_end"]
    program_id: str  # the one program-id rule is checked by Scheduler.on_tool_event (a 400 when broken)
    sandbox_id: str | None = None
    tool: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    time: float | None = None
    command: str | None = None
