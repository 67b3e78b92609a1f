"""Bounded capture of command output: keep the head and the tail, count everything."""

from __future__ import annotations

from .results import CapturedOutput

TRUNCATION_MARKER = b"\n[... output truncated ...]\n"


class HeadTailBuffer:
    """Keeps the first and last ``limit // 2`` bytes of a stream of any length.

    Memory stays O(limit) however much a command prints, and the tail (where errors and
    results usually are) survives.
    """

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError("output limit must be at least 2 bytes")
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def feed(self, data: bytes) -> None:
        self._total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            excess = len(self._tail) - self._tail_limit
            if excess > 0:
                del self._tail[:excess]

    @property
    def total_bytes(self) -> int:
        return self._total

    def result(self) -> CapturedOutput:
        truncated = self._total > len(self._head) + len(self._tail)
        if truncated:
            data = bytes(self._head) + TRUNCATION_MARKER + bytes(self._tail)
        else:
            data = bytes(self._head) + bytes(self._tail)
        return CapturedOutput(data=data, total_bytes=self._total, truncated=truncated)


class RollingBuffer:
    """The most recent ``limit`` bytes of a stream, addressed by absolute offsets (for polling)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self._start = 0  # absolute offset of self._data[0]

    def feed(self, data: bytes) -> None:
        self._data += data
        excess = len(self._data) - self._limit
        if excess > 0:
            del self._data[:excess]
            self._start += excess

    @property
    def end(self) -> int:
        return self._start + len(self._data)

    def read_from(self, offset: int) -> tuple[bytes, int]:
        """Bytes from ``offset`` on, and how many bytes before them were dropped."""
        offset = max(offset, 0)
        dropped = max(self._start - offset, 0)
        begin = max(offset - self._start, 0)
        return bytes(self._data[begin:]), dropped
