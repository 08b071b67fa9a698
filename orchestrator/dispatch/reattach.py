"""Re-attaching, after a restart, to MCP jobs whose container kept running (SPEC §6).

The orchestrator that started them died (crash, ``kill -9``, reboot of the process); their
``claude`` goes on inside the container, writing its stream to a file there. The next
process serves the dead gateway's address again, honours the run's token by its digest,
follows the stream from the start and records the end as if nothing had happened. Runs
that cannot be adopted are left to the reaper, which ends them truthfully.
"""

from __future__ import annotations

import logging
import time

import anyio

from orchestrator.dispatch.host import Host
from orchestrator.errors import AdSandboxError
from orchestrator.gateway.tokens import TokenInfo
from orchestrator.models import RunRecord, RunRequest
from orchestrator.privilege import scrub_after_run
from orchestrator.run.live import LiveRun
from orchestrator.run.runner import (
    FOLLOW_SCRIPT,
    conclude,
    end_unredactable,
    scrub_run,
    watch,
)
from orchestrator.run.sandbox import LABEL_CONFIG, agent_image, directory_owner, read_secrets
from orchestrator.state import pid_alive

log = logging.getLogger(__name__)

NO_SLOT_LIMIT = 1_000_000
"""An adopted run already runs: it takes a slot whatever the limit, so it is counted."""


def orphans(host: Host) -> list[RunRecord]:
    """Adoptable runs whose owner process is gone."""
    return [
        record for record in host.state.unfinished_runs()
        if record.adoptable and record.container_id and record.token_digest
        and record.owner_pid not in (None, host.pid)
        and not pid_alive(record.owner_pid)
    ]


async def adopt_orphans(host: Host) -> list[str]:
    """Adopt every orphan whose container still runs; returns their run ids.

    Call it before :meth:`Host.start`: its reaper ends the runs of dead processes."""
    candidates = orphans(host)
    if not candidates:
        return []
    await host.ensure_sandbox()
    adopted = []
    for record in candidates:
        assert record.container_id is not None
        status = await anyio.to_thread.run_sync(host.runtime.inspect, record.container_id)
        if status is None or not status.running:
            continue  # the reaper ends it: its container is gone
        if status.labels.get(LABEL_CONFIG) != host.scope:
            continue  # another config's run (a shared state dir): its own server adopts it
        try:
            _adopt(host, record)
        except AdSandboxError as exc:
            log.warning("cannot re-attach run %s: %s", record.run_id, exc.one_line())
            continue
        adopted.append(record.run_id)
    return adopted


def _adopt(host: Host, record: RunRecord) -> None:
    config = host.config
    agent = config.agent(record.agent)
    owner = directory_owner(record.agent, agent)
    try:
        secrets = read_secrets(record.agent, agent)
    except AdSandboxError as exc:  # its output could not be redacted: never hand it back
        end_unredactable(host.state, record, exc)
        raise
    gateway = host.gateway
    assert record.token_digest is not None and record.container_id is not None
    if record.gateway_url and not gateway.serve_also(record.gateway_url):
        log.warning("run %s: its gateway address %s is taken; its next model call will fail",
                    record.run_id, record.gateway_url)
    gateway.tokens.restore(record.token_digest, TokenInfo(
        run_id=record.run_id, root_id=record.root_id, agent=record.agent,
        depth=record.depth, caller=record.caller,
        server_tools=frozenset(agent.server_tools)))
    timeout = record.timeout_s or config.settings.default_timeout
    started = record.started_at or record.created_at
    state = host.state
    state.acquire_slot(record.run_id, owner_pid=host.pid, limit=NO_SLOT_LIMIT)
    state.add_container(record.container_id, agent=record.agent, owner_pid=host.pid,
                        lease_s=max(0.0, started + timeout - time.time()) + 60,
                        state="running", run_id=record.run_id)
    updated = state.update_run(record.run_id, owner_pid=host.pid,
                               last_action="re-attached after an orchestrator restart")
    live = LiveRun(updated)
    live.running(record.container_id)
    host.track(live)
    env = host.run_env(config)
    log.info("run %s: re-attached to container %s", record.run_id, record.container_id[:12])

    async def follow() -> None:
        assert record.container_id is not None and record.token_digest is not None
        try:
            remaining = max(0.0, started + timeout - time.time())
            outcome = await watch(env, live, record.container_id,
                                  ["bash", "-c", FOLLOW_SCRIPT], exec_env={},
                                  user=owner.user, timeout=remaining, secrets=secrets)
            request = RunRequest(agent=record.agent, task=record.task or "-",
                                 response_format=record.response_format)
            await scrub_run(env, live,
                            record.image or agent_image(config, agent), owner,
                            record.container_id, secrets)
            conclude(env, live, request, outcome, secrets)
        finally:
            with anyio.CancelScope(shield=True):
                gateway.tokens.revoke_digest(record.token_digest)
                state.release_slot(record.run_id)
                await host.release_container(record.container_id)
                await scrub_after_run(record.agent, agent.path, mount=agent.mount)
                host.untrack(live)

    host.spawn(follow)
