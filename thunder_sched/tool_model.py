"""Tool durations learned from tool events: how much longer will a running tool take?

Key: the tool and the first word of its command (`bash:pytest`, `bash:ls`, `file_read`). Samples are kept
per program and globally, in bounded rings. The estimate is the empirical mean residual life
E[D - t | D > t] at the tool's elapsed time t: for heavy-tailed tools it *grows* with t, which is what lets
the scheduler free the room of a tool that has already run long, even with a single tool kind.
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from dataclasses import dataclass, field

_WORD = re.compile(r"[A-Za-z0-9_.+-]{1,48}")


def tool_key(tool: str | None, command: str | None) -> str:
    """`tool:first-word` (the word's path stripped: /usr/bin/pytest -> pytest); attacker-written text is
    reduced to a short token so keys stay bounded."""
    base = (tool or "tool")[:64]
    if not command:
        return base
    first = command.strip().split(maxsplit=1)[0] if command.strip() else ""
    first = first.rsplit("/", 1)[-1]
    word = _WORD.match(first)
    return f"{base}:{word.group(0)}" if word else base


@dataclass(slots=True)
class _Samples:
    """A bounded ring of durations plus a sorted copy for residual-life queries."""

    limit: int
    ring: deque[float] = field(default_factory=deque)
    ordered: list[float] = field(default_factory=list)

    def add(self, duration: float) -> None:
        if len(self.ring) >= self.limit:
            old = self.ring.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        self.ring.append(duration)
        bisect.insort(self.ordered, duration)

    def residual(self, elapsed: float) -> float | None:
        """E[D - t | D > t]; None without samples; when every sample ended before t, t itself (the
        tool already outlived all it has been seen to do: expect it to run as long again)."""
        if not self.ordered:
            return None
        longer = self.ordered[bisect.bisect_right(self.ordered, elapsed) :]
        return sum(longer) / len(longer) - elapsed if longer else max(elapsed, self.ordered[-1])


class ToolDurationModel:
    """Per (program, key) and global (key) duration samples."""

    def __init__(
        self, *, min_samples: int = 3, global_limit: int = 512, program_limit: int = 32, max_keys: int = 1024
    ) -> None:
        self._min = min_samples
        self._max_keys = max_keys
        self._global_limit = global_limit
        self._program_limit = program_limit
        self._global: dict[str, _Samples] = {}
        self._programs: dict[str, dict[str, _Samples]] = {}

    def observe(self, program_id: str, key: str, duration_s: float) -> None:
        if not duration_s >= 0.0:  # also rejects NaN
            return
        key = self._bounded(key)
        self._global.setdefault(key, _Samples(self._global_limit)).add(duration_s)
        per = self._programs.setdefault(program_id, {})
        per.setdefault(key, _Samples(self._program_limit)).add(duration_s)

    def expected_remaining(self, program_id: str, key: str, elapsed_s: float) -> float | None:
        """E[D - t | D > t] at elapsed time t; None when the tool is unknown."""
        samples = self._samples(program_id, key)
        return samples.residual(elapsed_s) if samples is not None else None

    def mark_delay(self, program_id: str, key: str, threshold_s: float) -> float | None:
        """Elapsed time at which the tool's expected remaining time first exceeds `threshold_s` (0: at once);
        None when the tool is unknown. Between samples the residual life only falls, so it first exceeds
        the threshold at 0 or just after a sample ends; past the longest sample it is the elapsed time."""
        samples = self._samples(program_id, key)
        if samples is None:
            return None
        ordered = samples.ordered
        tail = sum(ordered)
        at = 0.0
        for i, d in enumerate(ordered):
            if tail / (len(ordered) - i) - at > threshold_s:
                return at
            tail -= d
            at = d
        return max(threshold_s, at)

    def _samples(self, program_id: str, key: str) -> _Samples | None:
        """The program's own history when it has enough samples, else everyone's; None when too few."""
        key = self._bounded(key)
        own = self._programs.get(program_id, {}).get(key)
        if own is not None and len(own.ordered) >= self._min:
            return own
        common = self._global.get(key)
        return common if common is not None and len(common.ordered) >= self._min else None

    def _bounded(self, key: str) -> str:
        """Past max_keys distinct keys, new ones fold into their tool's base key (memory stays bounded)."""
        if key in self._global or len(self._global) < self._max_keys:
            return key
        return key.split(":", 1)[0] if key.split(":", 1)[0] in self._global else "other"

    def forget(self, program_id: str) -> None:
        self._programs.pop(program_id, None)

    @property
    def keys(self) -> int:
        return len(self._global)
