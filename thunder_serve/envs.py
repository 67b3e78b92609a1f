"""What the combined server remembers of its env manager, learnt from the manager's lifecycle events (it
subscribes; it does not subclass the manager): each live program's last acquired spec (what to prepare
before the program is restored) and how often each program's environment side ended."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

from thunder_env import (
    EnvManager,
    LeaseReleasedError,
    LifecycleEvent,
    ProgramEnded,
    SandboxAcquired,
    SandboxNotFoundError,
    SandboxSpec,
)

# Programs remembered (live specs, recent ends): enough for a busy server; the oldest go first.
SPEC_MEMORY = 10_000


class EnvMemory:
    """Listens on ``manager.events`` from construction until ``close()``."""

    def __init__(self, manager: EnvManager) -> None:
        self.manager = manager
        self._last: OrderedDict[str, tuple[SandboxSpec, int]] = OrderedDict()  # program -> (spec, acquire no.)
        self._acquires = 0
        # Ends per recent program (exactly one is expected), for status and tests.
        self.end_calls: OrderedDict[str, int] = OrderedDict()
        manager.events.add_lifecycle_listener(self._on_event)

    async def _on_event(self, event: LifecycleEvent) -> None:
        if isinstance(event, SandboxAcquired):
            # Shares and forks are not what the program asked to be made: only acquires are prepared again.
            # An acquire racing the program's end must not revive its memory.
            if event.via == "acquire" and event.program_id not in self.end_calls:
                self._acquires += 1
                self._last[event.program_id] = (event.spec, self._acquires)
                self._last.move_to_end(event.program_id)
                _trim(self._last)
        elif isinstance(event, ProgramEnded):
            self._last.pop(event.program_id, None)
            self.end_calls[event.program_id] = self.end_calls.get(event.program_id, 0) + 1
            self.end_calls.move_to_end(event.program_id)
            _trim(self.end_calls)

    def last_acquire(self, program_id: str) -> tuple[SandboxSpec, int] | None:
        """The spec of the program's most recent acquire and that acquire's number, while the program lives."""
        return self._last.get(program_id)

    def last_spec(self, program_id: str) -> SandboxSpec | None:
        last = self._last.get(program_id)
        return last[0] if last else None

    def holds_spec(self, program_id: str, spec: SandboxSpec) -> bool:
        """Whether the program holds a live sandbox made from ``spec`` (then there is nothing to prepare)."""
        key = spec.key()
        for lease in self.manager.leases_of(program_id):
            try:
                if self.manager.sandbox_spec(lease).key() == key:
                    return True
            except (LeaseReleasedError, SandboxNotFoundError):
                continue
        return False

    def close(self) -> None:
        """Stop listening (idempotent)."""
        with contextlib.suppress(ValueError):  # already removed
            self.manager.events.remove_lifecycle_listener(self._on_event)


def _trim(memory: OrderedDict[str, Any]) -> None:
    while len(memory) > SPEC_MEMORY:
        memory.popitem(last=False)
