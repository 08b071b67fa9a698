"""Run records (also the jobs of async dispatch): typed columns to query, the record as JSON."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from orchestrator.errors import RunNotFound, UsageError
from orchestrator.models import RunRecord
from orchestrator.state.db import StoreBase

_COLUMNS = (
    "run_id, root_id, parent_id, agent, status, exit_reason, success, cached, owner_pid, "
    "container_id, created_at, finished_at, duration_ms, cost_usd, record"
)
_FIELDS = frozenset(RunRecord.model_fields)


def _row(record: RunRecord) -> tuple[Any, ...]:
    return (
        record.run_id, record.root_id, record.parent_id, record.agent, record.status,
        record.exit_reason, int(record.success), int(record.cached), record.owner_pid,
        record.container_id, record.created_at, record.finished_at, record.duration_ms,
        record.cost_usd, record.model_dump_json(),
    )


def _load(text: str) -> RunRecord:
    return RunRecord.model_validate_json(text)


class RunsMixin(StoreBase):
    def insert_run(self, record: RunRecord) -> None:
        """Store a new run; the id must be new."""
        try:
            with self._db.write() as conn:
                conn.execute(f"INSERT INTO runs ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                             _row(record))
        except sqlite3.IntegrityError as exc:
            raise UsageError(
                f"run {record.run_id} already exists",
                hint="Give each run a fresh id (models.new_id()).",
                run_id=record.run_id,
            ) from exc

    def update_run(self, run_id: str, **fields: Any) -> RunRecord:
        """Merge ``fields`` into the stored record atomically and return the new record."""
        unknown = set(fields) - _FIELDS
        if unknown:
            raise TypeError(f"update_run: RunRecord has no field(s) {sorted(unknown)}")
        with self._db.write() as conn:
            row = conn.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise _not_found(run_id)
            merged = RunRecord.model_validate({**_load(row[0]).model_dump(), **fields})
            values = _row(merged)
            conn.execute(
                "UPDATE runs SET root_id=?, parent_id=?, agent=?, status=?, exit_reason=?, "
                "success=?, cached=?, owner_pid=?, container_id=?, created_at=?, "
                "finished_at=?, duration_ms=?, cost_usd=?, record=? WHERE run_id=?",
                (*values[1:], run_id),
            )
        return merged

    def get_run(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; RunNotFound if there is none."""
        row = self._db.conn().execute(
            "SELECT record FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise _not_found(run_id)
        return _load(row[0])

    def find_run(self, prefix: str) -> RunRecord:
        """The one run whose id starts with ``prefix`` (the CLI accepts short ids)."""
        if not prefix:
            raise UsageError("give a run id or a prefix of one", hint="Run `ad-sandbox jobs`.")
        rows = self._db.conn().execute(
            "SELECT run_id, record FROM runs WHERE substr(run_id, 1, ?) = ? "
            "ORDER BY run_id = ? DESC, created_at DESC LIMIT 6",
            (len(prefix), prefix, prefix),
        ).fetchall()
        if not rows:
            raise _not_found(prefix)
        if len(rows) > 1 and rows[0][0] != prefix:
            ids = ", ".join(r[0] for r in rows[:5])
            raise UsageError(
                f"run id prefix {prefix!r} matches several runs: {ids}",
                hint="Type more characters of the run id.",
                prefix=prefix,
            )
        return _load(rows[0][1])

    def list_runs(
        self, *, status: str | None = None, agent: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Recent runs, newest first, optionally of one status and/or agent."""
        where, args = _filters(status=status, agent=agent)
        rows = self._db.conn().execute(
            f"SELECT record FROM runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*args, max(0, limit)),
        ).fetchall()
        return [_load(r[0]) for r in rows]

    def child_runs(self, parent_id: str) -> list[RunRecord]:
        """The nested runs ``parent_id`` dispatched, oldest first."""
        rows = self._db.conn().execute(
            "SELECT record FROM runs WHERE parent_id = ? ORDER BY created_at, rowid",
            (parent_id,),
        ).fetchall()
        return [_load(r[0]) for r in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs not yet finished (queued or running), oldest first."""
        rows = self._db.conn().execute(
            "SELECT record FROM runs WHERE status != 'finished' ORDER BY created_at"
        ).fetchall()
        return [_load(r[0]) for r in rows]

    def gc_runs(self, older_than_s: float) -> int:
        """Delete finished runs older than ``older_than_s``; return how many went."""
        now = time.time()
        cutoff = now - older_than_s
        with self._db.write() as conn:
            deleted = conn.execute(
                "DELETE FROM runs WHERE status = 'finished' "
                "AND COALESCE(finished_at, created_at) < ?",
                (cutoff,),
            ).rowcount
            # Ledger rows outlive their runs for at least two days: the daily budget reads them.
            conn.execute(
                "DELETE FROM ledger WHERE at < ? AND run_id NOT IN (SELECT run_id FROM runs) "
                "AND root_id NOT IN (SELECT run_id FROM runs)",
                (min(cutoff, now - 2 * 86400),),
            )
        return int(deleted)


def _filters(**eq: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in eq.items() if v is not None}
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())


def _not_found(run_id: str) -> RunNotFound:
    return RunNotFound(f"no run with id {run_id!r}", run_id=run_id)
