"""The MCP side of the cross-process coupling with a separately running `thunder-sched`.

Tool events of the env manager go to `POST /programs/{id}/events` (the event's own JSON form, the same
object `thunder serve` hands the scheduler in-process), and programs this server ends go to
`POST /programs/{id}/release`, except those the scheduler itself asked to end (its notifier calls
`POST /programs/{id}/end` here, see `end_route.py`). All of it through one `PostSender`: never blocking a
tool call, in order.
"""

from __future__ import annotations

from urllib.parse import quote

from thunder_env import EnvManager, ToolEvent

from .delivery import Post, PostSender
from .programs import EndNotice, ProgramRegistry


def events_path(program_id: str) -> str:
    return f"/programs/{quote(program_id, safe='')}/events"


def release_path(program_id: str) -> str:
    # notify=false: the program ended here already; the scheduler's notifier need not call back (it could
    # not, once this server has stopped).
    return f"/programs/{quote(program_id, safe='')}/release?notify=false"


class SchedulerLink:
    """Subscribes to the manager's tool events and the registry's ends; the caller owns ``sender``."""

    def __init__(self, sender: PostSender) -> None:
        self.sender = sender

    def attach(self, manager: EnvManager, registry: ProgramRegistry) -> None:
        manager.add_listener(self.on_tool_event)
        registry.add_end_listener(self.on_program_end)

    def detach(self, manager: EnvManager) -> None:
        manager.events.remove_listener(self.on_tool_event)

    async def on_tool_event(self, event: ToolEvent) -> None:
        self.sender.submit(Post(events_path(event.program_id), event.to_json()))

    def on_program_end(self, notice: EndNotice) -> None:
        if notice.external:
            return  # the scheduler ended it and asked us: it knows
        self.sender.submit(Post(release_path(notice.program_id)))
