"""One SQLite file shared by every orchestrator process: connections, transactions, schema.

WAL lets readers run beside one writer; ``BEGIN IMMEDIATE`` takes the write lock before the
first read of a read-modify-write, so two processes never act on the same stale snapshot.
Each thread gets its own connection because a sqlite3 connection is not safe to share.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock

from orchestrator.errors import AdSandboxError

SCHEMA_VERSION = 2
"""Every statement of _SCHEMA is idempotent (IF NOT EXISTS): a file of an older version
gets the new tables by running them all again."""
BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    root_id TEXT NOT NULL,
    parent_id TEXT,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_reason TEXT,
    success INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER,
    container_id TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_agent ON runs (agent, created_at);
CREATE INDEX IF NOT EXISTS runs_root ON runs (root_id);

CREATE TABLE IF NOT EXISTS containers (
    container_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    image TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    run_id TEXT,
    owner_pid INTEGER NOT NULL,
    lease_until REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_pick ON containers (agent, state, image);

CREATE TABLE IF NOT EXISTS slots (
    run_id TEXT PRIMARY KEY,
    owner_pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS waiters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    owner_pid INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    seen_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    usd REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_run ON ledger (run_id);
CREATE INDEX IF NOT EXISTS ledger_root ON ledger (root_id);
CREATE INDEX IF NOT EXISTS ledger_at ON ledger (at);

CREATE TABLE IF NOT EXISTS ledger_holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    usd REAL NOT NULL,
    owner_pid INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_holds_run ON ledger_holds (run_id);
CREATE INDEX IF NOT EXISTS ledger_holds_root ON ledger_holds (root_id);

CREATE TABLE IF NOT EXISTS ledger_overruns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    held_usd REAL NOT NULL,
    metered_usd REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_overruns_run ON ledger_overruns (run_id);

CREATE TABLE IF NOT EXISTS relayed_answers (
    run_id TEXT PRIMARY KEY,
    session_id TEXT,
    digests TEXT NOT NULL,
    stop_reason TEXT,
    at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_expires ON cache (expires_at);

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (``kill(pid, 0)`` semantics)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    # A zombie still answers kill(0) but will never release what it holds.
    with suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The state letter follows the ")" that closes the command name.
        if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
            return False
    return True


class Database:
    """Per-thread connections to one state file, with write transactions that serialise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        self._prepare_files()
        self._migrate()

    def _prepare_files(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        # Create the file 0600 ourselves; SQLite gives -wal and -shm the same mode.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        with suppress(OSError):
            os.chmod(self.path, 0o600)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (reopened after a fork: connections do not survive one)."""
        if self._closed:
            raise AdSandboxError(
                f"state store {self.path} is closed", hint="Open a new StateStore."
            )
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so close() may close it from another thread
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction; nested use joins the outer one."""
        conn = self.conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so several SELECTs see one snapshot."""
        conn = self.conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        # Processes starting together on a new file take turns: switching the journal mode
        # needs the file to itself and does not wait on busy_timeout ("database is locked").
        with FileLock(f"{self.path}.setup.lock", timeout=BUSY_TIMEOUT_S):
            self._migrate_locked()

    def _migrate_locked(self) -> None:
        conn = self.conn()
        # journal_mode cannot change inside a transaction; it persists in the file.
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        with self.write():
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise AdSandboxError(
                    f"state file {self.path} has schema version {version}, newer than "
                    f"this ad-sandbox understands ({SCHEMA_VERSION})",
                    hint="Upgrade ad-sandbox, or point AD_SANDBOX_STATE_DIR elsewhere.",
                    path=str(self.path),
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()


class StoreBase:
    """What every part of the state store shares: the database."""

    _db: Database
