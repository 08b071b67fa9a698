"""The money ledger: one row per metered model call, summed for run, root and daily budgets."""

from __future__ import annotations

import time

from orchestrator.state.db import StoreBase


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
