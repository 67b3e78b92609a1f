"""Leases: which program holds which sandbox, with reference counts. Pure bookkeeping, no I/O."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Lease:
    """A program's hold on a sandbox. Every sandbox operation takes one as proof of access."""

    lease_id: str
    program_id: str
    sandbox_id: str
    released: bool = False
    release_reason: str = ""

    def __repr__(self) -> str:
        state = f" released({self.release_reason})" if self.released else ""
        return f"Lease({self.lease_id} {self.program_id}->{self.sandbox_id}{state})"


@dataclass(slots=True)
class LeaseTable:
    _by_id: dict[str, Lease] = field(default_factory=dict)
    _by_sandbox: dict[str, set[str]] = field(default_factory=dict)
    _by_program: dict[str, set[str]] = field(default_factory=dict)

    def add(self, program_id: str, sandbox_id: str) -> Lease:
        lease = Lease(lease_id="ls-" + secrets.token_hex(6), program_id=program_id, sandbox_id=sandbox_id)
        self._by_id[lease.lease_id] = lease
        self._by_sandbox.setdefault(sandbox_id, set()).add(lease.lease_id)
        self._by_program.setdefault(program_id, set()).add(lease.lease_id)
        return lease

    def get(self, lease_id: str) -> Lease | None:
        return self._by_id.get(lease_id)

    def remove(self, lease: Lease, reason: str) -> int:
        """Drop one lease; returns how many leases its sandbox still has."""
        if self._by_id.pop(lease.lease_id, None) is not None:
            lease.released = True
            lease.release_reason = reason
            self._discard(self._by_sandbox, lease.sandbox_id, lease.lease_id)
            self._discard(self._by_program, lease.program_id, lease.lease_id)
        return len(self._by_sandbox.get(lease.sandbox_id, ()))

    def of_program(self, program_id: str) -> list[Lease]:
        return [self._by_id[i] for i in sorted(self._by_program.get(program_id, ()))]

    def of_sandbox(self, sandbox_id: str) -> list[Lease]:
        return [self._by_id[i] for i in sorted(self._by_sandbox.get(sandbox_id, ()))]

    def count(self, sandbox_id: str) -> int:
        return len(self._by_sandbox.get(sandbox_id, ()))

    def programs(self) -> list[str]:
        return sorted(self._by_program)

    def __len__(self) -> int:
        return len(self._by_id)

    @staticmethod
    def _discard(index: dict[str, set[str]], key: str, lease_id: str) -> None:
        ids = index.get(key)
        if ids is not None:
            ids.discard(lease_id)
            if not ids:
                del index[key]
