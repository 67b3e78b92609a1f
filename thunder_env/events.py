"""Events of the env manager, fanned out to async listeners on one ``EventBus``.

- Tool events: what the scheduler needs to know about a program's acting phase.
- Sandbox events: something happened to a sandbox behind its program's back (its container died).
- Lifecycle events: a program got or lost a lease, a program ended. The product layer subscribes to
  these instead of subclassing the manager (issue 12 item 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from .spec import SandboxSpec

log = logging.getLogger(__name__)

EventKind = Literal["tool_start", "tool_end"]


@dataclass(frozen=True, slots=True)
class ToolEvent:
    kind: EventKind
    program_id: str
    sandbox_id: str | None
    tool: str
    call_id: str
    time: float
    duration_s: float | None = None
    exit_code: int | None = None
    command: str | None = None  # the command's first word only (e.g. "pytest"): enough to learn durations

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "program_id": self.program_id,
            "sandbox_id": self.sandbox_id,
            "tool": self.tool,
            "call_id": self.call_id,
            "time": self.time,
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "command": self.command,
        }


def command_word(argv: list[str]) -> str | None:
    """The program a command runs: argv[0], or for `sh -c SCRIPT` the script's first word, path stripped
    and cut to 48 characters (the full command never leaves the manager in an event)."""
    if len(argv) >= 3 and argv[1] == "-c" and argv[0].rsplit("/", 1)[-1] in ("sh", "bash", "dash"):
        words = argv[2].split(maxsplit=1)
    else:
        words = argv[:1]
    if not words:
        return None
    return words[0].rsplit("/", 1)[-1][:48] or None


ToolEventListener = Callable[[ToolEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SandboxEvent:
    """Something happened to a sandbox behind its program's back (its container died)."""

    kind: Literal["sandbox_dead"]
    program_id: str
    sandbox_id: str
    reason: str
    time: float

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "program_id": self.program_id,
            "sandbox_id": self.sandbox_id,
            "reason": self.reason,
            "time": self.time,
        }


SandboxEventListener = Callable[[SandboxEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SandboxAcquired:
    """A program got a lease: ``via`` acquire (a new, warm, prepared or lingering sandbox), share or fork."""

    program_id: str
    sandbox_id: str
    lease_id: str
    spec: SandboxSpec  # what the sandbox was made from (a fork's: its snapshot's launch spec)
    via: Literal["acquire", "share", "fork"]
    time: float
    kind: Literal["sandbox_acquired"] = "sandbox_acquired"


@dataclass(frozen=True, slots=True)
class SandboxReleased:
    """A lease handed to a program ended: released, its program ended, or revoked (``reason`` says which:
    the same text a later call on the lease gets in its ``LeaseReleasedError``)."""

    program_id: str
    sandbox_id: str
    lease_id: str
    reason: str
    time: float
    kind: Literal["sandbox_released"] = "sandbox_released"


@dataclass(frozen=True, slots=True)
class ProgramEnded:
    """``end_program`` finished: the program holds nothing any more (its sandbox_released events came first)."""

    program_id: str
    leases_released: int
    time: float
    kind: Literal["program_ended"] = "program_ended"


LifecycleEvent = SandboxAcquired | SandboxReleased | ProgramEnded
LifecycleListener = Callable[[LifecycleEvent], Awaitable[None]]


class EventBus:
    """Fans tool events out to async listeners. A failing listener is logged, never fatal:
    a scheduler hiccup must not fail the agent's tool call."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._listeners: list[ToolEventListener] = []
        # Apart from tool listeners: a scheduler that knows only tool events never sees these.
        self._sandbox_listeners: list[SandboxEventListener] = []
        self._lifecycle_listeners: list[LifecycleListener] = []
        self.clock = clock

    def add_listener(self, listener: ToolEventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ToolEventListener) -> None:
        self._listeners.remove(listener)

    def add_sandbox_listener(self, listener: SandboxEventListener) -> None:
        self._sandbox_listeners.append(listener)

    def remove_sandbox_listener(self, listener: SandboxEventListener) -> None:
        self._sandbox_listeners.remove(listener)

    def add_lifecycle_listener(self, listener: LifecycleListener) -> None:
        """Hear every ``SandboxAcquired``, ``SandboxReleased`` and ``ProgramEnded`` (match on the type)."""
        self._lifecycle_listeners.append(listener)

    def remove_lifecycle_listener(self, listener: LifecycleListener) -> None:
        self._lifecycle_listeners.remove(listener)

    async def emit(self, event: ToolEvent) -> None:
        await _fan_out(list(self._listeners), event, event.kind)

    async def emit_sandbox(self, event: SandboxEvent) -> None:
        await _fan_out(list(self._sandbox_listeners), event, event.kind)

    async def emit_lifecycle(self, *events: LifecycleEvent) -> None:
        """In order: each event reaches every listener before the next one is sent."""
        for event in events:
            await _fan_out(list(self._lifecycle_listeners), event, event.kind)


async def _fan_out(listeners: list[Callable[[Any], Awaitable[None]]], event: object, kind: str) -> None:
    if not listeners:
        return
    results = await asyncio.gather(*(lst(event) for lst in listeners), return_exceptions=True)
    for listener, result in zip(listeners, results, strict=False):
        if isinstance(result, BaseException):
            log.warning("event listener %r failed on %s: %r", listener, kind, result)
