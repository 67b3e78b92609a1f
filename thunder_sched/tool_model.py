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
    cache: dict[int, float] = field(default_factory=dict)  # residual by elapsed tenths, until the next sample

    def add(self, duration: float) -> None:
        self.cache.clear()
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
        tenths = int(elapsed * 10)
        hit = self.cache.get(tenths)
        if hit is None:
            t = tenths / 10
            i = bisect.bisect_right(self.ordered, t)
            longer = self.ordered[i:]
            hit = sum(longer) / len(longer) - t if longer else max(t, self.ordered[-1])
            self.cache[tenths] = hit
        return hit


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
        """The program's own history when it has enough samples, else everyone's; None when unknown."""
        key = self._bounded(key)
        own = self._programs.get(program_id, {}).get(key)
        if own is not None and len(own.ordered) >= self._min:
            return own.residual(elapsed_s)
        common = self._global.get(key)
        if common is not None and len(common.ordered) >= self._min:
            return common.residual(elapsed_s)
        return None

    def mark_delay(self, program_id: str, key: str, threshold_s: float) -> float | None:
        """Elapsed time at which the tool's expected remaining time first exceeds `threshold_s` (0: at once);
        None when the tool is unknown. Between samples the residual life only falls, so it first exceeds
        the threshold at 0 or just after a sample ends; past the longest sample it is the elapsed time."""
        key = self._bounded(key)
        own = self._programs.get(program_id, {}).get(key)
        samples = own if own is not None and len(own.ordered) >= self._min else self._global.get(key)
        if samples is None or len(samples.ordered) < self._min:
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
