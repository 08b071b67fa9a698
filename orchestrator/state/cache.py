"""Result cache rows with a TTL, and the hit/miss counters shown by `ad-sandbox stats`.

Keys and values are built by the dispatcher (orchestrator/cache.py); here they are opaque
text. Expired rows are deleted when found, and counted.
"""

from __future__ import annotations

import sqlite3
import time

from orchestrator.state.db import StoreBase


class CacheMixin(StoreBase):
    def cache_get(self, key: str, now: float | None = None) -> str | None:
        """The cached JSON text for ``key``; None if absent or expired."""
        now = time.time() if now is None else now
        row = self._db.conn().execute(
            "SELECT value, expires_at FROM cache WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        if row[1] > now:
            return str(row[0])
        with self._db.write() as conn:
            # Re-check inside the lock: another process may have just refreshed it.
            gone = conn.execute(
                "DELETE FROM cache WHERE key = ? AND expires_at <= ?", (key, now)
            ).rowcount
            _bump(conn, "expired", gone)
        return None

    def cache_put(self, key: str, value: str, ttl_s: float, now: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds, and purge expired rows."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            gone = conn.execute("DELETE FROM cache WHERE expires_at <= ?", (now,)).rowcount
            _bump(conn, "expired", gone)
            conn.execute(
                "INSERT OR REPLACE INTO cache (key, value, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (key, value, now, now + ttl_s),
            )

    def cache_note(self, hit: bool) -> None:
        """Count one lookup as a hit or a miss."""
        with self._db.write() as conn:
            _bump(conn, "hits" if hit else "misses", 1)

    def cache_clear(self) -> int:
        """Drop every entry and reset the counters; return how many entries went."""
        with self._db.write() as conn:
            gone = conn.execute("DELETE FROM cache").rowcount
            conn.execute("DELETE FROM counters WHERE name IN ('hits', 'misses', 'expired')")
        return int(gone)

    def cache_stats(self, now: float | None = None) -> dict[str, int | float]:
        """Live entries, hits, misses, expired entries and the hit rate."""
        now = time.time() if now is None else now
        with self._db.read() as conn:
            live, stale = conn.execute(
                "SELECT COALESCE(SUM(expires_at > ?), 0), COALESCE(SUM(expires_at <= ?), 0) "
                "FROM cache",
                (now, now),
            ).fetchone()
            counts = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        hits, misses = int(counts.get("hits", 0)), int(counts.get("misses", 0))
        return {
            "entries": int(live),
            "hits": hits,
            "misses": misses,
            "expired": int(counts.get("expired", 0)) + int(stale),
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        }


def _bump(conn: sqlite3.Connection, name: str, by: int) -> None:
    if by:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )
