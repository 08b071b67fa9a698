"""One run in one container: prepare, exec `claude -p`, enforce the deadline, record the end.

The exit reason comes from what the orchestrator did (cancel, deadline, budget refusal) and
from Docker's state (OOM, exit code) — never from the text the agent printed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from orchestrator import claude, outcomes
from orchestrator.config import Agent, Config, LogSettings
from orchestrator.errors import AdSandboxError, SandboxError
from orchestrator.gateway.tokens import RunTokens, TokenInfo, token_digest
from orchestrator.models import ClaudeResult, EgressLog, ExitReason, RunRecord, RunRequest
from orchestrator.paths import state_dir
from orchestrator.privilege import scrub_after_run
from orchestrator.redaction import redact, redactor
from orchestrator.run import crosscheck, transcripts
from orchestrator.run.dirpin import verify_directory
from orchestrator.run.egress import EgressProxy, Proxy, denied_hint, proxy_env
from orchestrator.run.live import LiveRun
from orchestrator.run.netguard import ensure_agents_network
from orchestrator.run.pool import WarmPool
from orchestrator.run.prepared import Prepared
from orchestrator.run.runlog import CappedLog
from orchestrator.run.sandbox import (
    CONFIG_DIR,
    RUN_DIR,
    SECRETS_DIR,
    WORKSPACE,
    Owner,
)
from orchestrator.runtime.base import ExecResult, Runtime
from orchestrator.state import StateStore

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class GatewayHandle:
    """What a run needs from this process's gateway."""

    base_url: str
    tokens: RunTokens
    mcp_url: str | None = None


@dataclass
class RunEnv:
    config: Config
    state: StateStore
    runtime: Runtime
    gateway: GatewayHandle
    pool: WarmPool
    egress: EgressProxy | None = None
    """The egress proxy keeper (runs whose agent has ``network.egress`` other than none)."""


def run_log_path(run_id: str) -> Path:
    """Where a run's stream-json output (secrets redacted) is kept, for `ad-sandbox logs`."""
    folder = state_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"{run_id}.log"


class RunLog:
    """Appends a run's output, redacted; tolerates the abandoned exec thread of a killed run."""

    def __init__(self, path: Path, secrets: dict[str, bytes],
                 max_bytes: int = LogSettings().max_bytes) -> None:
        self._file = CappedLog(path, max_bytes)  # the agent decides how much it prints
        self._secrets = secrets
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(redact(text, self._secrets))
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


async def execute(env: RunEnv, request: RunRequest, prepared: Prepared,
                  live: LiveRun) -> RunRecord:
    """Run ``request`` to its end and return the finished record (also stored).

    ``prepared`` is what the dispatcher checked; ``env.config`` is its config snapshot.
    """
    record = live.record
    agent, owner, secrets = prepared.agent, prepared.owner, prepared.secrets
    image, timeout = prepared.image, prepared.timeout
    try:
        # Not the owner again (the run uses the checked one): the directory must still be
        # the one pinned right before a container mounts it, however long the run queued.
        verify_directory(request.agent, agent, env.state)
    except AdSandboxError as exc:
        return _finish_error(env, live, exc, exit_reason="crashed")

    token = env.gateway.tokens.issue(
        TokenInfo(
            run_id=record.run_id,
            root_id=record.root_id,
            agent=request.agent,
            depth=request.depth,
            caller=request.caller,
            budget_usd=request.max_budget_usd,
            root_budget_usd=request.root_budget_usd,
            server_tools=frozenset(agent.server_tools),
        )
    )
    container_id: str | None = None
    egress_at: tuple[Proxy, str] | None = None
    scrubbed = not secrets
    try:
        live.starting()
        container_id = await env.pool.acquire(request.agent, agent, image, owner, record.run_id,
                                              lease_s=timeout + 60)
        live.running(container_id)
        env.state.update_run(record.run_id, status="running", container_id=container_id,
                             image=image, started_at=time.time())
        extra_env: dict[str, str] = {}
        if agent.network.proxied:
            egress_at = await anyio.to_thread.run_sync(_open_egress, env, agent, container_id)
            extra_env = proxy_env(egress_at[0], _host_of(env.gateway.base_url))
        outcome = await _run_claude(env, request, prepared, container_id, token, live,
                                    extra_env=extra_env)
        # The transcripts lose their secrets before the run counts as finished (a reaper
        # removes a finished run's container), while its container still runs.
        scrubbed = scrubbed or await scrub_run(env, live, image, owner, container_id, secrets,
                                               helper_allowed=False)
        egress_log = None
        if egress_at is not None:
            opened, egress_at = egress_at, None
            egress_log = await anyio.to_thread.run_sync(_close_egress, env, agent, opened)
        # Recorded and answered first; the container is removed after (the caller does
        # not wait for that; the process does, before it exits).
        return conclude(env, live, request, outcome, secrets, egress=egress_log)
    except AdSandboxError as exc:
        if live.cancel_requested:  # the kill raced the set-up; the cancel is what happened
            raise
        return _finish_error(env, live, exc, exit_reason="crashed", container_id=container_id)
    finally:
        env.gateway.tokens.revoke(token)
        if egress_at is not None:  # ended early: the address loses its policy all the same
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close_egress, env, agent, egress_at)
        if not live.abandoned:  # a hold whose answer never began streaming is let go here
            env.state.release_holds(live.run_id)
        if container_id is not None and not live.abandoned:
            with anyio.CancelScope(shield=True):
                await env.pool.release(container_id)
                if not scrubbed:  # killed (timeout, cancel, OOM): a throwaway container does it
                    await scrub_run(env, live, image, owner, None, secrets)
                await scrub_after_run(request.agent, agent.path, mount=agent.mount)


def _open_egress(env: RunEnv, agent: Agent, container_id: str) -> tuple[Proxy, str]:
    """The proxy, and this run's container address given the agent's policy there."""
    if env.egress is None:
        raise SandboxError("this process has no egress proxy keeper",
                           hint="Run through `ad-sandbox run` or `ad-sandbox serve`.")
    proxy = env.egress.ensure(ensure_agents_network(env.runtime))
    state = env.runtime.inspect(container_id)
    client = state.addresses.get(env.pool.network, "") if state is not None else ""
    if not client:
        raise SandboxError(f"container {container_id[:12]} has no address on "
                           f"{env.pool.network}", container=container_id)
    env.egress.open(proxy, client, agent, container_id)
    return proxy, client


def _close_egress(env: RunEnv, agent: Agent, opened: tuple[Proxy, str]) -> EgressLog:
    """What the proxy decided for the run; a proxy that died during it took that along."""
    assert env.egress is not None
    try:
        return env.egress.close(*opened, agent.network.egress)
    except AdSandboxError as exc:
        log.warning("egress decisions of %s lost: %s", opened[1], exc.one_line())
        return EgressLog(mode=agent.network.egress, complete=False)


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


async def scrub_run(env: RunEnv, live: LiveRun, image: str, owner: Owner,
                    container_id: str | None, secrets: dict[str, bytes], *,
                    helper_allowed: bool = True) -> bool:
    """Secrets out of the run's session files on the volume; see :mod:`transcripts`."""
    return await transcripts.scrub_session(
        env.runtime, container_id=container_id, scope=env.pool.scope,
        agent_name=live.record.agent, image=image, owner=owner,
        session_id=env.state.get_run(live.run_id).session_id, secrets=secrets,
        helper_allowed=helper_allowed)


@dataclass
class _ExecOutcome:
    reason: ExitReason
    exit_code: int | None
    result: ClaudeResult | None
    stderr: str
    result_events: int = 0


async def _run_claude(
    env: RunEnv,
    request: RunRequest,
    prepared: Prepared,
    container_id: str,
    token: str,
    live: LiveRun,
    *,
    extra_env: dict[str, str],
) -> _ExecOutcome:
    agent, owner, secrets, timeout = (prepared.agent, prepared.owner, prepared.secrets,
                                      prepared.timeout)
    resume = request.session_id is not None
    session_id = request.session_id or str(uuid.uuid4())
    env.state.update_run(live.run_id, session_id=session_id, timeout_s=timeout,
                         gateway_url=env.gateway.base_url, token_digest=token_digest(token))
    # Nested dispatch: the gateway's /mcp, authenticated by this run's token (SPEC §5).
    nested = (env.gateway.mcp_url, token) if agent.dispatch_to and env.gateway.mcp_url else None
    mcp = claude.merged_mcp_config(claude.project_mcp_config(agent.path), nested)
    group = env.config.groups.get(request.group) if request.group else None
    prompt = claude.build_prompt(request, shared_context=group.shared_context if group else "")
    runtime = env.runtime
    if mcp is not None:
        files = {"mcp.json": json.dumps(mcp).encode()}
        await anyio.to_thread.run_sync(
            lambda: runtime.write_files(container_id, RUN_DIR, files, uid=owner.uid,
                                        gid=owner.gid))
    if secrets:
        await anyio.to_thread.run_sync(
            lambda: runtime.write_files(container_id, SECRETS_DIR, secrets,
                                        uid=owner.uid, gid=owner.gid)
        )
    argv = claude.build_argv(
        agent,
        session_id=session_id,
        resume=resume,
        max_budget_usd=prepared.budget_usd,
        mcp_config_path=f"{RUN_DIR}/mcp.json" if mcp is not None else None,
        output_format="stream-json",
        nested=nested is not None,
    )
    run_env = claude.claude_env(
        base_url=env.gateway.base_url,
        run_token=token,
        config_dir=CONFIG_DIR,
        uid=owner.uid,
        api_timeout_ms=int(min(timeout, 600) * 1000),
    ) | extra_env
    return await watch(env, live, container_id, ["bash", "-c", RUN_SCRIPT, "ad-sandbox-run", *argv],
                       exec_env=run_env, user=owner.user, timeout=timeout, secrets=secrets,
                       stdin_data=prompt.encode())


RUN_SCRIPT = f"""
cat > {RUN_DIR}/prompt
"$@" < {RUN_DIR}/prompt | tee -p {RUN_DIR}/stream.jsonl
code=${{PIPESTATUS[0]}}
echo "$code" > {RUN_DIR}/exit
exit "$code"
"""
"""Keeps the prompt (the exec's stdin) as a file, runs claude (argv after the script) with it
on stdin; its stream also goes to a file and its exit code to another, so a process that
adopts the run after a restart can follow it (tee -p keeps writing the file when the exec's
client is gone)."""

FOLLOW_SCRIPT = f"""
tail -n +1 -f {RUN_DIR}/stream.jsonl & follower=$!
while [ ! -e {RUN_DIR}/exit ]; do sleep 0.2; done
sleep 0.2; kill "$follower"
exit "$(cat {RUN_DIR}/exit)"
"""
"""Replays and follows an adopted run's stream until claude has ended; exits with its code."""


async def watch(
    env: RunEnv,
    live: LiveRun,
    container_id: str,
    argv: list[str],
    *,
    exec_env: dict[str, str],
    user: str,
    timeout: float,
    secrets: dict[str, bytes],
    stdin_data: bytes | None = None,
) -> _ExecOutcome:
    """Exec ``argv`` (claude, or a follower of it) to its end or the deadline; say how it ended."""
    runtime = env.runtime
    parser = claude.StreamParser()
    parser.clean = redactor(secrets)  # before an action is cut short, a cut secret escapes
    stderr: list[str] = []
    log_file = RunLog(run_log_path(live.run_id), secrets,
                      max_bytes=env.config.settings.logs.max_bytes)

    persisted = [""]

    def on_line(line: str) -> None:
        log_file.write(line.rstrip("\n") + "\n")
        if parser.feed(line) is None:
            return
        action = parser.last_action  # redacted: shown by ps, progress, the record
        live.progressed(last_action=action, input_tokens=parser.input_tokens,
                        output_tokens=parser.output_tokens, cost_usd=parser.cost_usd)
        if action != persisted[0]:  # for other processes' eyes (ps, status)
            persisted[0] = action
            env.state.update_run(live.run_id, last_action=action)

    def on_stderr(text: str) -> None:
        stderr.append(text)
        if len(stderr) > 32:  # only the end is used; the agent decides how much it prints
            stderr[:] = ["".join(stderr)[-4000:]]
        log_file.write(text)

    def run_exec() -> ExecResult:
        return runtime.exec(
            container_id, argv, env=exec_env, user=user, workdir=WORKSPACE,
            stdin_file=None, on_stdout_line=on_line, on_stderr=on_stderr, stdin_data=stdin_data,
        )

    exec_result: ExecResult | None = None
    timed_out = False
    exec_started = time.time()
    try:
        with anyio.move_on_after(timeout) as scope:
            exec_result = await anyio.to_thread.run_sync(run_exec, abandon_on_cancel=True)
        timed_out = scope.cancelled_caught
    except anyio.get_cancelled_exc_class():
        log_file.close()
        if live.abandoned:  # left running for the next process to re-attach
            raise
        live.request_cancel()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(runtime.kill, container_id)
        raise
    finally:  # every way out (an engine error too): the file is not left to the collector
        log_file.close()
    if timed_out:
        await anyio.to_thread.run_sync(runtime.kill, container_id)
    exit_code = exec_result.exit_code if exec_result else None
    oom = bool(exec_result and exec_result.oom_killed)
    if not oom and not timed_out and not live.cancel_requested:
        # Any process of the run (a tool's child too) killed by the kernel for memory makes
        # the run an OOM run; Docker's record of it decides, not the agent's text.
        # A normal exit asks the engine's events (ms); a SIGKILL also the cgroup's counter.
        oom = await anyio.to_thread.run_sync(
            lambda: runtime.was_oom_killed(container_id, since=exec_started,
                                           deep=exit_code in (None, 137)))
    result = parser.result()
    if (not live.cancel_requested and exit_code in (None, 137)
            and env.state.get_run(live.run_id).cancel_requested):  # by another process
        live.request_cancel()
    reason: ExitReason
    if live.cancel_requested:
        reason = "cancelled"
    elif timed_out:
        reason = "timeout"
    elif oom:
        reason = "oom"
    elif live.budget_reason is not None or (result and result.subtype == "error_max_budget_usd"):
        reason = "budget"
    elif result is not None:
        reason = "completed"
    else:
        reason = "crashed"
    return _ExecOutcome(reason, exit_code, result, "".join(stderr)[-4000:],
                        result_events=parser.result_count)


def conclude(
    env: RunEnv,
    live: LiveRun,
    request: RunRequest,
    outcome: _ExecOutcome,
    secrets: dict[str, bytes],
    *,
    egress: EgressLog | None = None,
) -> RunRecord:
    result = outcome.result
    if outcome.reason == "completed" and result is not None and not result.is_error:
        forged = crosscheck.check_run(env.state, live.run_id, result,
                                      result_events=outcome.result_events,
                                      exit_code=outcome.exit_code)
        if forged is not None:
            return _forged_result(env, live, redact(forged, secrets))
    text = redact(result.result if result else "", secrets)
    fields: dict[str, Any] = {
        "status": "finished",
        "exit_reason": outcome.reason,
        "finished_at": time.time(),
        "result": text,
        "last_action": live.last_action,
        "cost_usd": env.state.spent_run(live.run_id),
        "egress": egress,
    }
    if result is not None:
        fields.update(
            session_id=result.session_id or live.record.session_id,
            claude_cost_usd=result.cost_usd,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            num_turns=result.num_turns,
            denied_tools=result.denied_tools,
            outcome=claude.parse_outcome(text),
        )
    success = outcome.reason == "completed" and result is not None and not result.is_error
    fields["success"] = success
    if success and request.response_format == "json":
        try:
            fields["parsed_result"] = claude.parse_response_json(text)
        except ValueError:
            fields["parsed_result"] = None
    if not success:
        if outcome.reason == "completed":
            error_type, hint = claude.classify_failure(result, outcome.exit_code, outcome.stderr)
            detail = (result.errors[0] if result and result.errors else "") or text
        else:
            error_type, hint = outcomes.reason_error(outcome.reason)
            detail = live.budget_reason or ""
        fields["error_type"] = error_type
        denied = denied_hint(egress)
        fields["hint"] = f"{denied} {hint or ''}".strip() if denied else hint
        stderr = redact(outcome.stderr.strip(), secrets)
        fields["error"] = redact(
            f"run {outcome.reason}" + (f": {detail}" if detail else "")
            + (f" (stderr: {stderr[-500:]})" if stderr and outcome.reason == "crashed" else ""),
            secrets,
        )[:2000]
    return _store_end(env, live, fields)


def _forged_result(env: RunEnv, live: LiveRun, mismatch: str) -> RunRecord:
    """The end of a run whose claimed result the model never gave: crashed, no result."""
    log.warning("run %s: result rejected: %s", live.run_id, mismatch)
    return _store_end(env, live, {
        "status": "finished",
        "exit_reason": "crashed",
        "finished_at": time.time(),
        "success": False,
        "result": "",
        "last_action": live.last_action,
        "cost_usd": env.state.spent_run(live.run_id),
        "error_type": "sandbox",
        "error": f"run crashed: result rejected: {mismatch}"[:2000],
        "hint": crosscheck.FORGED_HINT.format(mismatch=mismatch[:500], run_id=live.run_id),
    })


def _finish_error(
    env: RunEnv,
    live: LiveRun,
    exc: AdSandboxError,
    *,
    exit_reason: ExitReason,
    container_id: str | None = None,
) -> RunRecord:
    fields: dict[str, Any] = {
        "status": "finished",
        "exit_reason": exit_reason,
        "finished_at": time.time(),
        "success": False,
        "error": exc.message,
        "error_type": exc.error_type,
        "hint": exc.hint,
        "container_id": container_id,
    }
    return _store_end(env, live, fields)


def end_unredactable(state: StateStore, record: RunRecord, exc: AdSandboxError) -> RunRecord:
    """End a re-attached run whose secrets this process cannot read, its output withheld.

    Output that cannot be redacted is never handed back: the run ends here, and the reaper
    removes its container since its record is finished.
    """
    resume = f", or resume session {record.session_id}" if record.session_id else ""
    return state.update_run(
        record.run_id, status="finished", success=False, exit_reason="crashed",
        finished_at=time.time(), result="", error_type=exc.error_type,
        error=(f"run {record.run_id} was stopped after an orchestrator restart: its secrets "
               f"cannot be read ({exc.message}), so its output could not be redacted and is "
               "withheld")[:2000],
        hint=f"{exc.hint} Then dispatch the task again{resume}.",
    )


def _store_end(env: RunEnv, live: LiveRun, fields: dict[str, Any]) -> RunRecord:
    started = live.record.created_at
    fields["duration_ms"] = int((fields["finished_at"] - started) * 1000)
    record = env.state.update_run(live.run_id, **fields)
    live.finish(record)
    return record
