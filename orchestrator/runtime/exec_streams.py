"""The open output streams of exec'd processes, per container, so that they end with it.

Checked with Debian's runsc 0.0~20221219 on Docker 20.10: under gVisor the engine never
closes the attached stream of a running ``docker exec`` when the container dies — killed
(``docker kill``, even ``rm -f``) or OOM-killed as a whole sandbox. The reader would wait
forever, and a process with such a thread cannot exit. So every streamed exec is tracked
here: ``kill`` and ``remove`` shut its socket, and for a container that needs it a watcher
shuts it once the container no longer runs (a death the orchestrator did not cause).
Under runc the engine ends the stream itself; shutting it again is harmless.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

WATCH_INTERVAL_S = 1.0


class Stream:
    """One exec's attached socket, which :meth:`abort` shuts (before or after it exists)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Any = None
        self.aborted = False
        self.done = threading.Event()

    def attach(self, sock: Any) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted:
                _shutdown(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                _shutdown(self._sock)


class StreamRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, set[Stream]] = {}

    @contextmanager
    def track(self, container_id: str,
              alive: Callable[[], bool] | None = None) -> Iterator[Stream]:
        """A stream of ``container_id``, registered while the block runs; with ``alive``, a
        watcher aborts it when ``alive()`` turns false."""
        stream = Stream()
        with self._lock:
            self._open.setdefault(container_id, set()).add(stream)
        if alive is not None:
            threading.Thread(target=_watch, args=(stream, alive), daemon=True,
                             name=f"exec-watch-{container_id[:8]}").start()
        try:
            yield stream
        finally:
            stream.done.set()
            with self._lock:
                streams = self._open.get(container_id, set())
                streams.discard(stream)
                if not streams:
                    self._open.pop(container_id, None)

    def abort(self, container_id: str) -> None:
        """End every tracked stream of ``container_id``."""
        with self._lock:
            streams = list(self._open.get(container_id, ()))
        for stream in streams:
            stream.abort()


def _watch(stream: Stream, alive: Callable[[], bool]) -> None:
    while not stream.done.wait(WATCH_INTERVAL_S):
        if not alive():
            stream.abort()
            return


def _shutdown(sock: Any) -> None:
    raw: socket.socket = getattr(sock, "_sock", sock)  # under the SocketIO of unix sockets
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)
