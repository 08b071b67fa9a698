"""Removes what no live run owns: at start-up and periodically (SPEC §4).

A labelled container goes when its run has finished, its lease has expired, or the process
that owns it is gone. Runs whose owner process died are ended with a truthful record.

A pass looks only at its own config's containers (label ``ad-sandbox.config``): another
config's owner pid may live in another pid namespace, or its server may be about to restart
and re-attach, so "owner gone" seen from here must never kill another config's run. Only
an explicit ``--all`` (``scope=None``) reaps every config's leftovers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from orchestrator.errors import AdSandboxError, RunNotFound
from orchestrator.run.sandbox import LABEL_CONFIG, LABEL_LEASE, LABEL_OWNER, LABEL_RUN
from orchestrator.runtime.base import WORKSPACE_VOLUME_LABEL, ContainerState, Runtime
from orchestrator.state import StateStore, pid_alive

log = logging.getLogger(__name__)


def reap(
    runtime: Runtime,
    state: StateStore,
    *,
    scope: str | None,
    now: float | None = None,
    alive: Callable[[int], bool] = pid_alive,
    every_container: bool = False,
) -> list[str]:
    """One pass over config ``scope``'s containers (None: every config's); returns the ids
    of the containers removed. ``every_container`` removes them whatever their state
    (``ad-sandbox down``)."""
    now = time.time() if now is None else now
    _end_orphaned_runs(state, now, alive)
    leases = {lease.container_id: lease for lease in state.containers()}
    removed: list[str] = []
    mine = None if scope is None else {LABEL_CONFIG: scope}
    for container in runtime.list_managed(mine):
        why = ("taken down" if every_container
               else _why_remove(container, leases.get(container.id), state, now, alive))
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
    present = {c.id for c in runtime.list_managed()}  # every config's: their leases stay
    for container_id in leases:
        if container_id not in present:
            state.remove_container(container_id)
    _prune_workspace_volumes(runtime)
    return removed


def _prune_workspace_volumes(runtime: Runtime) -> None:
    """The project-mount volumes of containers removed without their volumes."""
    try:
        pruned = runtime.prune_volumes({WORKSPACE_VOLUME_LABEL: "1"})
    except AdSandboxError as exc:
        log.warning("reaper: could not remove unused workspace volumes: %s", exc)
        return
    for name in pruned:
        log.info("reaper: removed unused workspace volume %s", name[:12])


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
