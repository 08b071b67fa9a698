"""Containers for runs: a warm pool per agent, claimed atomically, with a cold-start fallback.

A container serves exactly one run and is removed after it (SPEC §4).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import anyio

from orchestrator.config import Agent
from orchestrator.errors import AdSandboxError
from orchestrator.run.sandbox import Owner, container_spec, scope_labels, volume_name
from orchestrator.runtime.base import ContainerSpec, Runtime
from orchestrator.state import StateStore

log = logging.getLogger(__name__)

WARM_LEASE_S = 3600.0
"""A warm container nobody claims within this long is reaped (the owner renews it)."""
DETACHED_LEASE_S = 12 * 3600.0
"""Warm containers made by `ad-sandbox up` belong to no process; only their lease holds."""


def pool_key(scope: str, image: str, agent: Agent, owner: Owner) -> str:
    """What a warm container must match to serve a run: config, image, agent config, user.

    The config's identity is part of it: two configs sharing a state dir never hand each
    other a container (it mounts the other config's session volume)."""
    digest = hashlib.sha256(
        f"{scope}|{agent.model_dump_json()}|{owner.user}".encode()
    ).hexdigest()[:12]
    return f"{image}#{digest}"


class WarmPool:
    def __init__(self, *, runtime: Runtime, state: StateStore, network: str, scope: str,
                 owner_pid: int | None = None) -> None:
        self.runtime = runtime
        self.scope = scope
        """The config identity keying this pool's containers and volumes."""
        self.state = state
        self.network = network
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.closed = False
        """Set when the owning process stops: a fill in flight then removes what it made
        instead of leaving a warm container no live process owns."""

    async def acquire(self, agent_name: str, agent: Agent, image: str, owner: Owner,
                      run_id: str, *, lease_s: float) -> str:
        """A running container for ``run_id``: a claimed warm one, else a fresh one."""
        key = pool_key(self.scope, image, agent, owner)
        for _ in range(3):
            claimed = self.state.claim_warm(agent_name, run_id=run_id, owner_pid=self.owner_pid,
                                            lease_s=lease_s, image=key)
            if claimed is None:
                break
            status = await anyio.to_thread.run_sync(self.runtime.inspect, claimed)
            if status is not None and status.running:
                log.info("run %s: warm container %s", run_id, claimed[:12])
                return claimed
            log.warning("warm container %s is gone; dropping it", claimed[:12])
            await self.release(claimed)
        spec = self._spec(agent_name, agent, image, owner, run_id=run_id, lease_s=lease_s)
        # Shielded up to the return: a cancel landing mid-create must not lose the id the
        # caller's clean-up needs (it takes effect at the caller's next await).
        with anyio.CancelScope(shield=True):
            await self._prepare_volume(agent_name, image, owner)
            container_id = await anyio.to_thread.run_sync(self.runtime.create, spec)
            self.state.add_container(container_id, agent=agent_name, owner_pid=self.owner_pid,
                                     lease_s=lease_s, state="running", run_id=run_id)
        log.info("run %s: cold container %s", run_id, container_id[:12])
        return container_id

    async def release(self, container_id: str) -> None:
        """Remove a container after its run (or a broken warm one)."""
        try:
            await anyio.to_thread.run_sync(self.runtime.remove, container_id)
        finally:
            self.state.remove_container(container_id)

    async def fill(self, agent_name: str, agent: Agent, image: str, owner: Owner, target: int,
                   *, detached: bool = False, strict: bool = False) -> list[str]:
        """Start warm containers until ``target`` wait for this agent; returns the new ids.

        A container that cannot be started ends the filling: logged, or raised when
        ``strict`` (``up --wait`` fails with the reason)."""
        key = pool_key(self.scope, image, agent, owner)
        waiting = [c for c in self.state.containers(agent=agent_name, state="warm")
                   if c.image == key]
        created: list[str] = []
        lease = DETACHED_LEASE_S if detached else WARM_LEASE_S
        pid = 0 if detached else self.owner_pid
        for _ in range(max(0, target - len(waiting))):
            if self.closed and not detached:
                break
            spec = self._spec(agent_name, agent, image, owner, run_id="", lease_s=lease,
                              owner_pid=pid)
            # Shielded: a cancel mid-create must not lose a container the thread still makes.
            with anyio.CancelScope(shield=True):
                try:
                    await self._prepare_volume(agent_name, image, owner)
                    container_id = await anyio.to_thread.run_sync(self.runtime.create, spec)
                except AdSandboxError as exc:
                    if strict:
                        raise
                    log.warning("warm pool for %s not filled: %s", agent_name, exc.one_line())
                    break
                if self.closed and not detached:  # its process stopped while it started
                    await anyio.to_thread.run_sync(self.runtime.remove, container_id)
                    break
                self.state.add_container(container_id, agent=agent_name, owner_pid=pid,
                                         lease_s=lease, state="warm", image=key)
            created.append(container_id)
        return created

    async def _prepare_volume(self, agent_name: str, image: str, owner: Owner) -> None:
        """The session volume, 0700 and owned by the run's uid before a container mounts it
        (the project's owner may have changed since the last run)."""
        name = volume_name(self.scope, agent_name)
        await anyio.to_thread.run_sync(lambda: self.runtime.prepare_volume(
            name, labels=scope_labels(self.scope, agent_name), image=image,
            uid=owner.uid, gid=owner.gid))

    def _spec(self, agent_name: str, agent: Agent, image: str, owner: Owner, *, run_id: str,
              lease_s: float, owner_pid: int | None = None) -> ContainerSpec:
        return container_spec(
            scope=self.scope, agent_name=agent_name, agent=agent, image=image, owner=owner,
            network=self.network, suffix=run_id[:12] or "w" + uuid.uuid4().hex[:11],
            owner_pid=self.owner_pid if owner_pid is None else owner_pid,
            lease_s=lease_s, run_id=run_id,
        )
