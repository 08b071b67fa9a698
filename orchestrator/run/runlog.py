"""A run's log file with a size cap: the head as it comes, then a marker, then the tail.

Everything a container prints is hostile input; without a cap one run can fill the host's
disk (a 20 MB flood used to store 22.6 MB). :class:`CappedLog` writes the first half of
``settings.logs.max_bytes`` straight to the file (so `logs --follow` sees the start live),
keeps the most recent output up to the other half in memory, and on close writes a marker
saying how much was dropped, then that tail, so the log still ends with the run's result.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import TextIO

MARKER_RESERVE = 512
"""Bytes of the cap kept for the marker line."""


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def marker(dropped: int, max_bytes: int) -> str:
    """The line that stands where output was dropped."""
    return (f"[ad-sandbox: dropped {dropped:,} bytes of output here; the log keeps "
            f"{max_bytes:,} bytes (settings.logs.max_bytes)]\n")


class CappedLog:
    """A text file (append mode, UTF-8) that never grows past ``max_bytes`` (+ one marker).

    Not thread-safe on its own: the caller serialises ``write`` and ``close``.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._file: TextIO = path.open("a", encoding="utf-8")
        self.max_bytes = max_bytes
        # A re-attached run appends to the log its first process began: that counts too.
        self._written = self._file.tell()
        self._head_max = max(0, max_bytes // 2)
        self._tail_max = max(0, max_bytes - self._head_max - MARKER_RESERVE)
        self._tail: deque[tuple[str, int]] = deque()
        self._tail_bytes = 0
        self.dropped = 0
        self._overflowed = False

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, text: str) -> None:
        """Append ``text``: to the file while the head has room, else to the kept tail."""
        size = _size(text)
        if not self._overflowed and self._written + size <= self._head_max:
            self._file.write(text)
            self._written += size
            return
        self._overflowed = True
        if size > self._tail_max:  # one huge chunk: keep its end
            keep = text[-self._tail_max:] if self._tail_max else ""
            self.dropped += size - _size(keep)
            text, size = keep, _size(keep)
        self._tail.append((text, size))
        self._tail_bytes += size
        while self._tail_bytes > self._tail_max and self._tail:
            _, old = self._tail.popleft()
            self._tail_bytes -= old
            self.dropped += old

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        """Write the marker and the kept tail (if anything was held back), then close."""
        if self._file.closed:
            return
        if self._overflowed:
            if self.dropped:
                self._file.write(marker(self.dropped, self.max_bytes))
            self._file.write("".join(text for text, _ in self._tail))
            self._tail.clear()
            self._tail_bytes = 0
        self._file.close()
