"""Container leases: every container we create is tracked, so a reaper can find leftovers.

A lease row says who owns a container (pid), until when, and its state: ``warm`` (idle in
the pool), ``claimed`` (serving exactly one run) or whatever the runtime sets next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.state.db import StoreBase, pid_alive

_COLUMNS = "container_id, agent, image, state, run_id, owner_pid, lease_until, created_at"


@dataclass(frozen=True)
class ContainerLease:
    """One tracked container."""

    container_id: str
    agent: str
    image: str
    state: str
    run_id: str | None
    owner_pid: int
    lease_until: float
    created_at: float


def _lease(row: tuple[Any, ...]) -> ContainerLease:
    return ContainerLease(*row)


class PoolMixin(StoreBase):
    def add_container(
        self,
        container_id: str,
        *,
        agent: str,
        owner_pid: int,
        lease_s: float,
        state: str = "warm",
        run_id: str | None = None,
        image: str = "",
    ) -> None:
        """Track a container (insert, or replace a row with the same id)."""
        now = time.time()
        with self._db.write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO containers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (container_id, agent, image, state, run_id, owner_pid, now + lease_s, now),
            )

    def claim_warm(
        self, agent: str, *, run_id: str, owner_pid: int, lease_s: float, image: str
    ) -> str | None:
        """Atomically take one live warm container of ``agent`` built from ``image``.

        Returns its id, now ``claimed`` by ``run_id``, or None when the pool is empty. Rows
        whose lease ran out or whose owner died are skipped: the reaper is removing them.
        """
        now = time.time()
        with self._db.write() as conn:
            rows = conn.execute(
                "SELECT container_id, owner_pid FROM containers "
                "WHERE agent = ? AND image = ? AND state = 'warm' AND lease_until > ? "
                "ORDER BY created_at, container_id",
                (agent, image, now),
            ).fetchall()
            for container_id, pid in rows:
                if pid and not pid_alive(pid):  # pid 0: detached (made by `up`), lease only
                    continue
                conn.execute(
                    "UPDATE containers SET state = 'claimed', run_id = ?, owner_pid = ?, "
                    "lease_until = ? WHERE container_id = ?",
                    (run_id, owner_pid, now + lease_s, container_id),
                )
                return str(container_id)
        return None

    def renew_lease(self, container_id: str, lease_s: float) -> None:
        """Push the lease of a container ``lease_s`` seconds past now (no-op if untracked)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE containers SET lease_until = ? WHERE container_id = ?",
                (time.time() + lease_s, container_id),
            )

    def set_container_state(
        self, container_id: str, state: str, run_id: str | None = None
    ) -> None:
        """Change a container's state; ``run_id`` replaces the stored one only when given."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE containers SET state = ?, run_id = COALESCE(?, run_id) "
                "WHERE container_id = ?",
                (state, run_id, container_id),
            )

    def remove_container(self, container_id: str) -> None:
        """Stop tracking a container (after it was removed from Docker)."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM containers WHERE container_id = ?", (container_id,))

    def containers(
        self, *, agent: str | None = None, state: str | None = None
    ) -> list[ContainerLease]:
        """Tracked containers, oldest first, optionally of one agent and/or state."""
        given = {k: v for k, v in {"agent": agent, "state": state}.items() if v is not None}
        where = ("WHERE " + " AND ".join(f"{k} = ?" for k in given)) if given else ""
        rows = self._db.conn().execute(
            f"SELECT {_COLUMNS} FROM containers {where} ORDER BY created_at, container_id",
            tuple(given.values()),
        ).fetchall()
        return [_lease(r) for r in rows]

    def expired_or_orphaned(
        self, now: float, alive: Callable[[int], bool] = pid_alive
    ) -> list[ContainerLease]:
        """Containers to reap: lease expired, owner process gone, or their run finished."""
        rows = self._db.conn().execute(
            f"SELECT {', '.join('c.' + c.strip() for c in _COLUMNS.split(','))}, "
            "r.status FROM containers c LEFT JOIN runs r ON r.run_id = c.run_id "
            "ORDER BY c.created_at, c.container_id"
        ).fetchall()
        verdicts: dict[int, bool] = {}
        found = []
        for row in rows:
            lease, run_status = _lease(row[:-1]), row[-1]
            if lease.owner_pid not in verdicts:
                verdicts[lease.owner_pid] = alive(lease.owner_pid)
            if (
                lease.lease_until <= now
                or (lease.owner_pid != 0 and not verdicts[lease.owner_pid])
                or run_status == "finished"
            ):
                found.append(lease)
        return found
