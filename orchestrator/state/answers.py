"""The last model answer the gateway relayed for each run: what claude's result must match.

Kept in the shared state (not in the gateway's memory) so a process that re-attaches a run
after a restart can still check a result whose answer the dead process relayed. Only
digests of the answer's text are kept, never the text.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from orchestrator.state.db import StoreBase


@dataclass(frozen=True)
class RelayedAnswer:
    """What the gateway saw of one complete model answer."""

    session_id: str | None
    """The ``x-claude-code-session-id`` header of the request it answered."""
    digests: tuple[str, ...]
    """sha256 of each text the final result may legitimately be (see gateway.answers)."""
    stop_reason: str | None
    at: float = 0.0


class AnswersMixin(StoreBase):
    def record_answer(self, run_id: str, answer: RelayedAnswer) -> None:
        """Make ``answer`` the last relayed answer of ``run_id``."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO relayed_answers "
                "(run_id, session_id, digests, stop_reason, at) VALUES (?, ?, ?, ?, ?)",
                (run_id, answer.session_id, json.dumps(list(answer.digests)),
                 answer.stop_reason, answer.at or time.time()),
            )

    def last_answer(self, run_id: str) -> RelayedAnswer | None:
        """The last answer relayed for ``run_id``, or None when there was none."""
        row = self._db.conn().execute(
            "SELECT session_id, digests, stop_reason, at FROM relayed_answers WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        digests = json.loads(row[1])
        return RelayedAnswer(
            session_id=row[0],
            digests=tuple(d for d in digests if isinstance(d, str)),
            stop_reason=row[2],
            at=float(row[3]),
        )
