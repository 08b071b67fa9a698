"""Removes what no live run owns: at start-up and periodically (SPEC §4).

A labelled container goes when its run has finished, its lease has expired, or the process
that owns it is gone. Runs whose owner process died are ended with a truthful record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from orchestrator.errors import AdSandboxError, RunNotFound
from orchestrator.runtime.base import ContainerState, Runtime
from orchestrator.sandbox import LABEL_LEASE, LABEL_OWNER, LABEL_RUN
from orchestrator.state import StateStore, pid_alive

log = logging.getLogger(__name__)


def reap(
    runtime: Runtime,
    state: StateStore,
    *,
    now: float | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> list[str]:
    """One pass; returns the ids of the containers removed."""
    now = time.time() if now is None else now
    _end_orphaned_runs(state, now, alive)
    leases = {lease.container_id: lease for lease in state.containers()}
    removed: list[str] = []
    for container in runtime.list_managed():
        why = _why_remove(container, leases.get(container.id), state, now, alive)
        if why is None:
            continue
        log.info("reaper: removing %s (%s)", container.id[:12], why)
        try:
            runtime.remove(container.id)
        except AdSandboxError as exc:
            log.warning("reaper: could not remove %s: %s", container.id[:12], exc)
            continue
        state.remove_container(container.id)
        removed.append(container.id)
    present = {c.id for c in runtime.list_managed()}
    for container_id in leases:
        if container_id not in present:
            state.remove_container(container_id)
    return removed


def _why_remove(
    container: ContainerState,
    lease: object | None,
    state: StateStore,
    now: float,
    alive: Callable[[int], bool],
) -> str | None:
    labels = container.labels
    run_id = getattr(lease, "run_id", None) or labels.get(LABEL_RUN) or ""
    if run_id:
        try:
            if state.get_run(run_id).status == "finished":
                return f"run {run_id} finished"
        except RunNotFound:
            pass  # another state dir's run: only its owner's death or its lease decide
    owner = int(getattr(lease, "owner_pid", None) or labels.get(LABEL_OWNER) or 0)
    if owner and not alive(owner):
        return f"owner process {owner} is gone"
    lease_until = getattr(lease, "lease_until", None) or float(labels.get(LABEL_LEASE) or 0)
    if lease_until and lease_until < now:
        return "lease expired"
    if not container.running and lease is not None:
        return "stopped"
    return None


def _end_orphaned_runs(state: StateStore, now: float, alive: Callable[[int], bool]) -> None:
    for record in state.unfinished_runs():
        owner = record.owner_pid
        if owner is None or alive(owner):
            continue
        state.update_run(
            record.run_id,
            status="finished",
            exit_reason="crashed",
            success=False,
            finished_at=now,
            error_type="sandbox",
            error=f"the orchestrator process {owner} that ran it ended mid-run "
            f"(state was {record.status}); its container was removed",
            hint="Dispatch the task again; resume its session_id to keep the context.",
        )
