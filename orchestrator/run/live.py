"""The in-memory side of a running run: its progress, its cancel switch, its end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio

from orchestrator.models import RunRecord
from orchestrator.results import ProgressFn, ProgressUpdate

HEARTBEAT_S = 5.0
"""Progress is sent on every change and at least this often (MCP clients time out idle calls)."""


class LiveRun:
    """Shared between the run's task, its exec thread, the gateway and ``cancel``.

    It is changed only through its methods: each takes the lock (a thread and the event loop
    write it concurrently) and wakes the waiters, so no writer can forget either. The
    properties are for reading. The async side waits on events with deadlines; no one polls.
    Create it inside the event loop.
    """

    def __init__(self, record: RunRecord) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._changed = anyio.Event()
        self._done = anyio.Event()
        self._record = record
        self._state = "queued"
        self._queue_position: int | None = None
        self._last_action = ""
        self._input_tokens = 0
        self._output_tokens = 0
        self._cost_usd = 0.0
        self._container_id: str | None = None
        self._cancel_requested = False
        self._budget_reason: str | None = None
        self._abandoned = False
        self._scope: anyio.CancelScope | None = None

    # ---- reading ---------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def record(self) -> RunRecord:
        """The record as created, or as finished once :meth:`finish` was called."""
        return self._record

    @property
    def state(self) -> str:
        return self._state

    @property
    def queue_position(self) -> int | None:
        return self._queue_position

    @property
    def last_action(self) -> str:
        return self._last_action

    @property
    def container_id(self) -> str | None:
        return self._container_id

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def budget_reason(self) -> str | None:
        """Why the gateway refused the run's next model call, if it did."""
        return self._budget_reason

    @property
    def abandoned(self) -> bool:
        """The process is stopping and leaves the run to the next one (SIGTERM of a server):
        nothing is killed or recorded; the next `serve` re-attaches it."""
        return self._abandoned

    @property
    def scope(self) -> anyio.CancelScope | None:
        """The run's own scope: cancelling it stops a run that has no process to kill yet."""
        return self._scope

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def snapshot(self) -> ProgressUpdate:
        with self._lock:
            return ProgressUpdate(
                run_id=self.run_id,
                agent=self._record.agent,
                elapsed_s=time.monotonic() - self.started,
                state=self._state,
                last_action=self._last_action,
                input_tokens=self._input_tokens,
                output_tokens=self._output_tokens,
                cost_usd=self._cost_usd,
                queue_position=self._queue_position,
            )

    # ---- changing ----------------------------------------------------------------------------

    def run_in(self, scope: anyio.CancelScope) -> None:
        with self._lock:
            self._scope = scope

    def queued(self, position: int | None) -> None:
        """Waiting for a concurrency slot at ``position`` (None: no longer waiting)."""
        with self._lock:
            self._queue_position = position
        self.poke()

    def starting(self) -> None:
        with self._lock:
            self._state = "starting"
        self.poke()

    def running(self, container_id: str) -> None:
        with self._lock:
            self._container_id = container_id
            self._state = "running"
        self.poke()

    def progressed(self, *, last_action: str, input_tokens: int, output_tokens: int,
                   cost_usd: float) -> None:
        """What the stream showed last; the cost only grows (a late event never lowers it)."""
        with self._lock:
            self._last_action = last_action
            self._input_tokens = input_tokens
            self._output_tokens = output_tokens
            self._cost_usd = max(self._cost_usd, cost_usd)
        self.poke()

    def request_cancel(self) -> str | None:
        """Flag the run cancelled; returns its container to kill, if it has one yet."""
        with self._lock:
            self._cancel_requested = True
            container_id = self._container_id
        self.poke()
        return container_id

    def refuse_budget(self, reason: str) -> None:
        with self._lock:
            self._budget_reason = reason
        self.poke()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
        self.poke()

    def finish(self, record: RunRecord) -> None:
        with self._lock:
            self._record = record
            self._state = "finished"
        self._call(self._done.set)
        self.poke()

    # ---- waiting -----------------------------------------------------------------------------

    def poke(self) -> None:
        """Wake the waiters; safe from any thread."""
        self._call(self._changed.set)

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
