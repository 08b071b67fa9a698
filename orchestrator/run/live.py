"""The in-memory side of a running run: its progress, its cancel switch, its end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from orchestrator.models import RunRecord
from orchestrator.results import ProgressFn, ProgressUpdate

HEARTBEAT_S = 5.0
"""Progress is sent on every change and at least this often (MCP clients time out idle calls)."""


@dataclass
class LiveRun:
    """Shared between the run's task, its exec thread, the gateway and ``cancel``.

    Threads set plain attributes under ``lock`` and call :meth:`poke`, which hands the wake-up
    to the event loop; the async side waits on events with deadlines, so no one polls.
    Create it inside the event loop.
    """

    record: RunRecord
    started: float = field(default_factory=time.monotonic)
    state: str = "queued"
    queue_position: int | None = None
    last_action: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    container_id: str | None = None
    cancel_requested: bool = False
    budget_reason: str | None = None
    abandoned: bool = False
    """The process is stopping and leaves the run to the next one (SIGTERM of a server):
    nothing is killed or recorded; the next `serve` re-attaches it."""
    scope: anyio.CancelScope | None = None
    """The run's own scope: cancelling it stops a run that has no process to kill yet."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def poke(self) -> None:
        """Wake the waiters; safe from any thread."""
        self._call(self._changed.set)

    def finish(self, record: RunRecord) -> None:
        self.record = record
        self.state = "finished"
        self._call(self._done.set)
        self.poke()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_done(self, timeout_s: float | None = None) -> bool:
        """True when the run ended (within ``timeout_s``, when given)."""
        with anyio.move_on_after(timeout_s):
            await self._done.wait()
        return self.done

    async def wait_change(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()
        self._changed = anyio.Event()

    def _call(self, func: Callable[[], None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            func()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(func)

    def snapshot(self) -> ProgressUpdate:
        with self.lock:
            return ProgressUpdate(
                run_id=self.run_id,
                agent=self.record.agent,
                elapsed_s=time.monotonic() - self.started,
                state=self.state,
                last_action=self.last_action,
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cost_usd=self.cost_usd,
                queue_position=self.queue_position,
            )


async def report_progress(live: LiveRun, progress: ProgressFn) -> None:
    """Send an update on every change and at least every ``HEARTBEAT_S``, until the run ends."""
    last: ProgressUpdate | None = None
    last_sent = 0.0
    while not live.done:
        await live.wait_change(HEARTBEAT_S)
        update = live.snapshot()
        now = time.monotonic()
        stale = now - last_sent >= HEARTBEAT_S
        if update.state == "finished":
            return
        if last is None or stale or _differs(update, last):
            await progress(update)
            last, last_sent = update, now


def _differs(a: ProgressUpdate, b: ProgressUpdate) -> bool:
    return (a.state, a.last_action, a.output_tokens, a.queue_position) != (
        b.state, b.last_action, b.output_tokens, b.queue_position,
    )
