"""Concurrency slots global to the machine, handed out first come, first served.

A run holds a slot row while it runs. Runs that must wait register in ``waiters`` and poll
``acquire_slot``; a free slot goes to the oldest live waiter, so no run starves. Slots and
waiters of dead processes are dropped, and a waiter that has not polled for
``WAITER_STALE_S`` is presumed gone (its process lives on but forgot to dequeue).
"""

from __future__ import annotations

import sqlite3
import time

from orchestrator.state.db import StoreBase, pid_alive

WAITER_STALE_S = 120.0


class SlotsMixin(StoreBase):
    def acquire_slot(self, run_id: str, *, owner_pid: int, limit: int) -> bool:
        """Take a slot for ``run_id`` if one is free and no earlier waiter needs it."""
        now = time.time()
        if not self._worth_writing(run_id, limit, now):
            return False
        with self._db.write() as conn:
            _prune(conn, now)
            if conn.execute("SELECT 1 FROM slots WHERE run_id = ?", (run_id,)).fetchone():
                return True
            held = int(conn.execute("SELECT COUNT(*) FROM slots").fetchone()[0])
            free = limit - held
            waiting = [r[0] for r in conn.execute("SELECT run_id FROM waiters ORDER BY seq")]
            ahead = waiting.index(run_id) if run_id in waiting else len(waiting)
            if ahead >= free:
                conn.execute("UPDATE waiters SET seen_at = ? WHERE run_id = ?", (now, run_id))
                return False
            conn.execute(
                "INSERT INTO slots (run_id, owner_pid, acquired_at) VALUES (?, ?, ?)",
                (run_id, owner_pid, now),
            )
            conn.execute("DELETE FROM waiters WHERE run_id = ?", (run_id,))
            return True

    def _worth_writing(self, run_id: str, limit: int, now: float) -> bool:
        """Whether a poll needs the write lock: it may win a slot or has rows to clean.

        Pollers that all took the write lock would starve the one whose turn it is (SQLite
        locks are not fair), so a poll that would lose is answered from a read snapshot.
        """
        with self._db.read() as conn:
            holders = [r[0] for r in conn.execute("SELECT owner_pid FROM slots")]
            waiters = conn.execute(
                "SELECT run_id, owner_pid, seen_at FROM waiters ORDER BY seq"
            ).fetchall()
            holds = conn.execute("SELECT 1 FROM slots WHERE run_id = ?", (run_id,)).fetchone()
        if holds:
            return True
        pids = set(holders) | {w[1] for w in waiters}
        if not all(map(pid_alive, pids)) or any(w[2] < now - WAITER_STALE_S for w in waiters):
            return True
        ids = [w[0] for w in waiters]
        mine = ids.index(run_id) if run_id in ids else None
        if mine is not None and waiters[mine][2] < now - WAITER_STALE_S / 4:
            return True  # refresh our seen_at now and then
        ahead = len(ids) if mine is None else mine
        return ahead < limit - len(holders)

    def release_slot(self, run_id: str) -> None:
        """Give back the slot of ``run_id`` (no-op if it holds none)."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM slots WHERE run_id = ?", (run_id,))

    def slot_holders(self) -> list[str]:
        """Run ids holding a slot now, in the order they got it."""
        rows = self._db.conn().execute("SELECT run_id FROM slots ORDER BY acquired_at, run_id")
        return [r[0] for r in rows]

    def enqueue(self, run_id: str, owner_pid: int) -> None:
        """Register ``run_id`` as waiting for a slot (keeps its place if already queued)."""
        now = time.time()
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO waiters (run_id, owner_pid, enqueued_at, seen_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET seen_at = excluded.seen_at",
                (run_id, owner_pid, now, now),
            )

    def dequeue(self, run_id: str) -> None:
        """Stop waiting (the run got a slot, was cancelled or failed)."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM waiters WHERE run_id = ?", (run_id,))

    def queue_position(self, run_id: str) -> int:
        """1-based place of ``run_id`` among live waiters; 0 when it is not waiting."""
        cutoff = time.time() - WAITER_STALE_S
        rows = self._db.conn().execute(
            "SELECT run_id, owner_pid FROM waiters WHERE seen_at >= ? ORDER BY seq", (cutoff,)
        ).fetchall()
        live = [rid for rid, pid in rows if pid_alive(pid)]
        return live.index(run_id) + 1 if run_id in live else 0


def _prune(conn: sqlite3.Connection, now: float) -> None:
    """Drop slots and waiters whose process is gone, and waiters that stopped polling."""
    for table in ("slots", "waiters"):
        pids = {r[0] for r in conn.execute(f"SELECT DISTINCT owner_pid FROM {table}")}
        dead = [(pid,) for pid in pids if not pid_alive(pid)]
        if dead:
            conn.executemany(f"DELETE FROM {table} WHERE owner_pid = ?", dead)
    conn.execute("DELETE FROM waiters WHERE seen_at < ?", (now - WAITER_STALE_S,))
