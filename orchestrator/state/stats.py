"""Aggregates over run records for `ad-sandbox stats` and for hints ("usually takes 40 s")."""

from __future__ import annotations

import math
import statistics
from typing import Any

from orchestrator.state.db import StoreBase

TYPICAL_SAMPLE = 50


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _failure_key(exit_reason: str | None) -> str:
    # A run that completed yet failed is the agent's own error, not a sandbox stop.
    return exit_reason if exit_reason not in (None, "completed") else "error"


class StatsMixin(StoreBase):
    def stats(self, since: float | None = None) -> dict[str, Any]:
        """Per agent: runs, successes, failures by exit reason, cost, median/p90 duration;
        per budget root of more than one run (a nested or fanned-out tree): runs and cost."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT agent, status, exit_reason, success, cached, duration_ms, cost_usd "
                "FROM runs WHERE created_at >= ? ORDER BY agent",
                (since if since is not None else float("-inf"),),
            ).fetchall()
            spent = conn.execute(
                "SELECT COALESCE(SUM(usd), 0.0) FROM ledger WHERE at >= ?",
                (since if since is not None else float("-inf"),),
            ).fetchone()[0]
            # Trees (nested dispatch, fan-out): one budget root over several runs.
            trees = conn.execute(
                "SELECT root_id, COUNT(*), SUM(cost_usd), MAX(parent_id IS NOT NULL) FROM runs "
                "WHERE created_at >= ? GROUP BY root_id HAVING COUNT(*) > 1 "
                "ORDER BY SUM(cost_usd) DESC",
                (since if since is not None else float("-inf"),),
            ).fetchall()
        agents: dict[str, dict[str, Any]] = {}
        durations: dict[str, list[float]] = {}
        for agent, status, exit_reason, success, cached, duration_ms, cost in rows:
            entry = agents.setdefault(agent, {
                "runs": 0, "unfinished": 0, "successes": 0, "cached": 0,
                "failures": {}, "cost_usd": 0.0,
            })
            entry["runs"] += 1
            entry["cost_usd"] += cost
            entry["cached"] += int(bool(cached))
            if status != "finished":
                entry["unfinished"] += 1
            elif success:
                entry["successes"] += 1
            else:
                key = _failure_key(exit_reason)
                entry["failures"][key] = entry["failures"].get(key, 0) + 1
            if status == "finished" and not cached and duration_ms > 0:
                durations.setdefault(agent, []).append(float(duration_ms))
        for agent, entry in agents.items():
            ms = durations.get(agent, [])
            median, p90 = percentile(ms, 50), percentile(ms, 90)
            entry["median_ms"] = None if median is None else int(median)
            entry["p90_ms"] = None if p90 is None else int(p90)
        return {
            "since": since,
            "agents": agents,
            "roots": {root: {"runs": runs, "cost_usd": float(cost or 0.0), "nested": bool(nested)}
                      for root, runs, cost, nested in trees},
            "total": {
                "runs": sum(a["runs"] for a in agents.values()),
                "successes": sum(a["successes"] for a in agents.values()),
                "cost_usd": sum(a["cost_usd"] for a in agents.values()),
                "metered_usd": float(spent),
            },
        }

    def typical(self, agent: str) -> tuple[int | None, float | None]:
        """Median duration_ms and cost of the agent's recent successful (uncached) runs."""
        rows = self._db.conn().execute(
            "SELECT duration_ms, cost_usd FROM runs WHERE agent = ? AND status = 'finished' "
            "AND success = 1 AND cached = 0 ORDER BY created_at DESC LIMIT ?",
            (agent, TYPICAL_SAMPLE),
        ).fetchall()
        if not rows:
            return None, None
        return (
            int(statistics.median(r[0] for r in rows)),
            float(statistics.median(r[1] for r in rows)),
        )
