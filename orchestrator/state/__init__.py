"""Durable state shared by every orchestrator process on the machine (SQLite, WAL).

One file, ``state_dir()/state.db``, holds run records, container leases, concurrency slots,
the money ledger and the result cache, so limits hold across processes, not per process.
Each concern lives in its own module; ``StateStore`` joins them.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.paths import state_dir
from orchestrator.state.answers import AnswersMixin, RelayedAnswer
from orchestrator.state.cache import CacheMixin
from orchestrator.state.db import SCHEMA_VERSION, Database, pid_alive
from orchestrator.state.ledger import LedgerMixin
from orchestrator.state.pins import DirectoryPin, PinsMixin
from orchestrator.state.pool import ContainerLease, PoolMixin
from orchestrator.state.runs import RunsMixin
from orchestrator.state.slots import SlotsMixin
from orchestrator.state.stats import StatsMixin, percentile

__all__ = [
    "SCHEMA_VERSION", "ContainerLease", "DirectoryPin", "RelayedAnswer", "StateStore",
    "percentile", "pid_alive",
]


class StateStore(RunsMixin, PoolMixin, SlotsMixin, LedgerMixin, CacheMixin, StatsMixin,
                 PinsMixin, AnswersMixin):
    """The machine-wide state; safe to share between threads and across processes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else state_dir() / "state.db"
        self._db = Database(self.path)

    def close(self) -> None:
        """Close the connections of every thread; the store is unusable afterwards."""
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
