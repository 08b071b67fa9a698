"""The money ledger: one row per metered model call, summed for run, root and daily budgets.

Before a model call is forwarded, :meth:`LedgerMixin.reserve` holds its largest possible
cost in ``ledger_holds``, inside one ``BEGIN IMMEDIATE`` transaction that first sums what
is spent and held at each level: gateways of every process serialise there, so the holds in
flight plus the spend never pass a budget. :meth:`LedgerMixin.settle` then swaps the hold
for the metered cost, never more than the hold; any excess goes to ``ledger_overruns``.
Holds of a process that died, or older than ``HOLD_TTL_S``, are dropped on the next reserve.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.state.db import StoreBase, pid_alive

HOLD_TTL_S = 2 * 3600.0
"""A hold outlives any one model answer (the longest outputs stream for well under an hour);
after this a hold whose owner is still alive (a pid reused, say) is dropped anyway."""
_EPSILON = 1e-12


@dataclass(frozen=True)
class Limits:
    """The budgets one request counts against, and where the rolling day starts."""

    run: float
    root: float
    daily: float
    day_since: float


@dataclass(frozen=True)
class Level:
    """One budget at the moment a request asked: its limit, spend and holds in flight."""

    name: str
    limit: float
    spent: float
    held: float

    @property
    def left(self) -> float:
        return self.limit - self.spent - self.held

    def describe(self) -> str:
        return (f"{self.name} budget ${self.limit:.2f}: ${self.spent:.4f} spent, "
                f"${self.held:.4f} held by requests in flight")


@dataclass(frozen=True)
class Headroom:
    """What is left at every level; the smallest is what a request may hold."""

    levels: tuple[Level, ...]

    @property
    def tightest(self) -> Level:
        return min(self.levels, key=lambda level: level.left)

    @property
    def left(self) -> float:
        return max(0.0, self.tightest.left)


@dataclass(frozen=True)
class Reservation:
    """A hold of ``usd`` (``id`` None: refused, nothing held) and the headroom it saw."""

    id: int | None
    usd: float
    headroom: Headroom


@dataclass(frozen=True)
class Overrun:
    """A call whose metered cost passed what it held; only the hold was booked."""

    run_id: str
    held_usd: float
    metered_usd: float
    input_tokens: int
    output_tokens: int
    reason: str
    at: float


class LedgerMixin(StoreBase):
    def add_cost(
        self,
        run_id: str,
        root_id: str,
        usd: float,
        input_tokens: int,
        output_tokens: int,
        at: float | None = None,
    ) -> None:
        """Record what one model call of ``run_id`` (under ``root_id``) cost."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO ledger (run_id, root_id, usd, input_tokens, output_tokens, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, root_id, usd, input_tokens, output_tokens,
                 time.time() if at is None else at),
            )

    def spent_run(self, run_id: str) -> float:
        """Dollars metered for one run."""
        return self._sum("run_id = ?", run_id)

    def spent_root(self, root_id: str) -> float:
        """Dollars metered for a whole dispatch tree."""
        return self._sum("root_id = ?", root_id)

    def spent_since(self, since: float) -> float:
        """Dollars metered on the machine since ``since`` (epoch seconds)."""
        return self._sum("at >= ?", since)

    def tokens_run(self, run_id: str) -> tuple[int, int]:
        """Input and output tokens metered for one run."""
        row = self._db.conn().execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
            "FROM ledger WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def _sum(self, where: str, arg: str | float) -> float:
        row = self._db.conn().execute(
            f"SELECT COALESCE(SUM(usd), 0.0) FROM ledger WHERE {where}", (arg,)
        ).fetchone()
        return float(row[0])

    # ---- holds: reserve before a call, settle or release after --------------------------

    def reserve(
        self,
        run_id: str,
        root_id: str,
        limits: Limits,
        size: Callable[[float], float | None],
        *,
        ttl_s: float = HOLD_TTL_S,
    ) -> Reservation:
        """Hold what ``size(left)`` returns (USD, at most ``left``) for one call of ``run_id``.

        ``left`` is the smallest of the run's, the root's and the day's limit minus spend
        minus holds. ``size`` returning None (or more than ``left``) refuses: nothing is held;
        so does a spent budget, even for a call that would hold nothing.
        One write transaction from sum to insert, so concurrent callers in any process
        serialise and their holds together never pass a limit.
        """
        now = time.time()
        with self._db.write() as conn:
            self._drop_stale_holds(now)
            headroom = self._headroom(run_id, root_id, limits)
            usd = None if headroom.tightest.left <= 0 else size(headroom.left)
            if usd is None or usd < 0 or usd > headroom.left + _EPSILON:
                return Reservation(None, 0.0, headroom)
            cursor = conn.execute(
                "INSERT INTO ledger_holds (run_id, root_id, usd, owner_pid, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, root_id, usd, os.getpid(), now, now + ttl_s),
            )
            return Reservation(cursor.lastrowid, usd, headroom)

    def settle(
        self,
        hold_id: int | None,
        run_id: str,
        root_id: str,
        *,
        held_usd: float,
        metered_usd: float,
        input_tokens: int,
        output_tokens: int,
        complete: bool,
    ) -> float:
        """Replace a hold by the call's cost and return what was booked.

        A complete answer books its metered cost up to ``held_usd``; an incomplete one (cut
        off, usage not final) books the whole hold, since it may have been billed for output
        nobody saw. A metered cost above the hold is recorded in ``ledger_overruns``.
        """
        booked = min(metered_usd, held_usd) if complete else held_usd
        now = time.time()
        with self._db.write() as conn:
            if hold_id is not None:
                conn.execute("DELETE FROM ledger_holds WHERE id = ?", (hold_id,))
            conn.execute(
                "INSERT INTO ledger (run_id, root_id, usd, input_tokens, output_tokens, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, root_id, booked, input_tokens, output_tokens, now),
            )
            if metered_usd > held_usd + _EPSILON:
                conn.execute(
                    "INSERT INTO ledger_overruns (run_id, root_id, held_usd, metered_usd, "
                    "input_tokens, output_tokens, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, root_id, held_usd, metered_usd, input_tokens, output_tokens,
                     "metered usage above the hold", now),
                )
        return booked

    def release(self, hold_id: int | None) -> None:
        """Drop a hold without booking anything (the call was never billed)."""
        if hold_id is None:
            return
        with self._db.write() as conn:
            conn.execute("DELETE FROM ledger_holds WHERE id = ?", (hold_id,))

    def release_holds(self, run_id: str) -> None:
        """Drop every hold of ``run_id`` (the run is over; a late answer still books)."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM ledger_holds WHERE run_id = ?", (run_id,))

    def held_run(self, run_id: str) -> float:
        """Dollars held by calls of ``run_id`` still in flight."""
        row = self._db.conn().execute(
            "SELECT COALESCE(SUM(usd), 0.0) FROM ledger_holds WHERE run_id = ?", (run_id,)
        ).fetchone()
        return float(row[0])

    def overruns(self, run_id: str | None = None) -> list[Overrun]:
        """Calls whose metered cost passed their hold, oldest first (of one run if given)."""
        sql = ("SELECT run_id, held_usd, metered_usd, input_tokens, output_tokens, reason, at "
               "FROM ledger_overruns")
        args: tuple[str, ...] = ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id = ?", (run_id,)
        rows = self._db.conn().execute(sql + " ORDER BY id", args).fetchall()
        return [Overrun(str(r[0]), float(r[1]), float(r[2]), int(r[3]), int(r[4]), str(r[5]),
                        float(r[6])) for r in rows]

    def _headroom(self, run_id: str, root_id: str, limits: Limits) -> Headroom:
        conn = self._db.conn()

        def total(table: str, where: str, arg: str | float) -> float:
            row = conn.execute(
                f"SELECT COALESCE(SUM(usd), 0.0) FROM {table} WHERE {where}", (arg,)
            ).fetchone()
            return float(row[0])

        held_all = float(conn.execute(
            "SELECT COALESCE(SUM(usd), 0.0) FROM ledger_holds").fetchone()[0])
        return Headroom((
            Level("run", limits.run, total("ledger", "run_id = ?", run_id),
                  total("ledger_holds", "run_id = ?", run_id)),
            Level("root", limits.root, total("ledger", "root_id = ?", root_id),
                  total("ledger_holds", "root_id = ?", root_id)),
            Level("daily", limits.daily, total("ledger", "at >= ?", limits.day_since), held_all),
        ))

    def _drop_stale_holds(self, now: float) -> None:
        conn = self._db.conn()
        conn.execute("DELETE FROM ledger_holds WHERE expires_at < ?", (now,))
        pids = [int(r[0]) for r in conn.execute("SELECT DISTINCT owner_pid FROM ledger_holds")]
        for pid in pids:
            if not pid_alive(pid):
                conn.execute("DELETE FROM ledger_holds WHERE owner_pid = ?", (pid,))
