"""Directory pins: which directory (resolved path, device, inode) each agent was registered
with, so a run can refuse a directory that was swapped since (see orchestrator/dirpin.py).

Keyed by the config file's resolved path plus the agent name: two config files may use the
same agent name for different directories.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from orchestrator.state.db import StoreBase

PINS_SCHEMA = """
CREATE TABLE IF NOT EXISTS directory_pins (
    config TEXT NOT NULL,
    agent TEXT NOT NULL,
    directory TEXT NOT NULL,
    resolved TEXT NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    pinned_at REAL NOT NULL,
    PRIMARY KEY (config, agent)
)
"""


@dataclass(frozen=True)
class DirectoryPin:
    """An agent directory as it was when registered."""

    directory: str
    """The ``directory`` field of the config at the time (a changed field means re-pin)."""
    resolved: str
    """Its real path then: no symlink in any component."""
    dev: int
    ino: int


class PinsMixin(StoreBase):
    _pins_ready: bool = False

    def _pins_conn(self) -> sqlite3.Connection:
        conn = self._db.conn()
        if not self._pins_ready:
            # Also here, not only in the schema: a state file already at the current
            # version when this table was added would not get it by migration.
            conn.execute(PINS_SCHEMA)
            self._pins_ready = True
        return conn

    def directory_pin(self, config: str, agent: str) -> DirectoryPin | None:
        """The pin of ``agent`` in config file ``config``, if it was ever pinned."""
        row = self._pins_conn().execute(
            "SELECT directory, resolved, dev, ino FROM directory_pins "
            "WHERE config = ? AND agent = ?", (config, agent)
        ).fetchone()
        if row is None:
            return None
        return DirectoryPin(str(row[0]), str(row[1]), int(row[2]), int(row[3]))

    def set_directory_pin(self, config: str, agent: str, pin: DirectoryPin,
                          *, replace: bool = True) -> DirectoryPin:
        """Record ``pin``; with ``replace=False`` an existing pin wins (trust on first use
        racing another process). Returns the pin now stored."""
        self._pins_conn()
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._db.write() as conn:
            conn.execute(
                f"{verb} INTO directory_pins "
                "(config, agent, directory, resolved, dev, ino, pinned_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (config, agent, pin.directory, pin.resolved, pin.dev, pin.ino, time.time()),
            )
        stored = self.directory_pin(config, agent)
        assert stored is not None
        return stored

    def drop_directory_pin(self, config: str, agent: str) -> None:
        """Forget the pin of a removed agent."""
        self._pins_conn()
        with self._db.write() as conn:
            conn.execute("DELETE FROM directory_pins WHERE config = ? AND agent = ?",
                         (config, agent))
