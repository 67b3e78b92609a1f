"""The env manager of the combined server: an `EnvManager` that remembers each program's last acquired spec
(what to prepare before the program is restored) and counts how often each program's environment side ended."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from thunder_env import EnvManager, Lease, LeaseReleasedError, SandboxNotFoundError, SandboxSpec

# Programs remembered (live specs, recent ends): enough for a busy server; the oldest go first.
SPEC_MEMORY = 10_000


class CombinedEnvManager(EnvManager):
    """`EnvManager` plus two facts the combined layer needs; every behaviour of the manager is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last: OrderedDict[str, tuple[SandboxSpec, int]] = OrderedDict()  # program -> (spec, acquire no.)
        self._acquires = 0
        # end_program calls per recent program (exactly one is expected), for status and tests.
        self.end_calls: OrderedDict[str, int] = OrderedDict()

    async def acquire(self, program_id: str, spec: SandboxSpec) -> Lease:
        lease = await super().acquire(program_id, spec)
        if program_id not in self.end_calls:  # an acquire racing the program's end must not revive its memory
            self._acquires += 1
            self._last[program_id] = (spec, self._acquires)
            self._last.move_to_end(program_id)
            while len(self._last) > SPEC_MEMORY:
                self._last.popitem(last=False)
        return lease

    async def end_program(self, program_id: str) -> int:
        self._last.pop(program_id, None)  # first: a restore seen meanwhile has nothing to prepare
        self.end_calls[program_id] = self.end_calls.get(program_id, 0) + 1
        self.end_calls.move_to_end(program_id)
        while len(self.end_calls) > SPEC_MEMORY:
            self.end_calls.popitem(last=False)
        return await super().end_program(program_id)

    def last_acquire(self, program_id: str) -> tuple[SandboxSpec, int] | None:
        """The spec of the program's most recent acquire and that acquire's number, while the program lives."""
        return self._last.get(program_id)

    def last_spec(self, program_id: str) -> SandboxSpec | None:
        last = self._last.get(program_id)
        return last[0] if last else None

    def holds_spec(self, program_id: str, spec: SandboxSpec) -> bool:
        """Whether the program holds a live sandbox made from ``spec`` (then there is nothing to prepare)."""
        key = spec.key()
        for lease in self.leases_of(program_id):
            try:
                if self.sandbox_spec(lease).key() == key:
                    return True
            except (LeaseReleasedError, SandboxNotFoundError):
                continue
        return False
