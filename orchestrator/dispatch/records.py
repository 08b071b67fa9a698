"""What the state store keeps, read or changed by one command: run records (``jobs``,
``job``, ``stats``), run logs (``logs``) and the pins of agent directories (``add``,
``update``, ``remove``).

These need no engine and no service: the records are written by whichever process ran
the run, and read here after the fact.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import AgentNotFound, RunNotFound
from orchestrator.gateway.lifecycle import DAY_S
from orchestrator.models import RunRecord
from orchestrator.run.dirpin import forget_directory, nested_agents, pin_directory
from orchestrator.run.runner import run_log_path
from orchestrator.state import StateStore

FOLLOW_POLL_S = 0.5
SUGGEST_RUNS = 20


def list_runs(*, status: str | None, agent: str | None, limit: int) -> list[RunRecord]:
    """Recent runs, newest first."""
    with StateStore() as state:
        return state.list_runs(status=status, agent=agent, limit=limit)


def find_run(ref: str) -> RunRecord:
    """The run with id or unique id prefix ``ref``; raises :class:`RunNotFound`."""
    with StateStore() as state:
        return state.find_run(ref)


def child_runs(run_id: str) -> list[RunRecord]:
    """The nested runs ``run_id`` dispatched (through the gateway's ``/mcp``)."""
    with StateStore() as state:
        return state.child_runs(run_id)


def run_stats(days: float) -> dict[str, Any]:
    """Runs, successes, failures by exit reason, cost and durations per agent."""
    with StateStore() as state:
        return state.stats(since=time.time() - days * DAY_S)


def _target_run(state: StateStore, target: str) -> RunRecord:
    """Run ``target`` (id or prefix), or agent ``target``'s latest run."""
    try:
        return state.find_run(target)
    except RunNotFound:
        runs = state.list_runs(agent=target, limit=1)
        if not runs:
            raise AgentNotFound(f"no run or agent matches {target!r}",
                                hint="See `ad-sandbox jobs` for run ids.") from None
        return runs[0]


def target_run(target: str) -> RunRecord:
    """The record ``logs`` shows: run ``target`` (id or prefix) or agent ``target``'s latest."""
    with StateStore() as state:
        return _target_run(state, target)


@dataclass(frozen=True)
class EgressSuggestion:
    agent: str
    runs: int
    """How many of the agent's recent runs went through the proxy."""
    hosts: dict[str, int]
    """Every host those runs reached or tried (allowed or denied) → requests."""


def suggest_allow_hosts(agent: str, *, last: int = SUGGEST_RUNS) -> EgressSuggestion:
    """The hosts agent ``agent``'s last ``last`` proxied runs asked for (``learn`` records
    them all; an allowlist run's denials are there too)."""
    with StateStore() as state:
        records = [r for r in state.list_runs(agent=agent, limit=last) if r.egress is not None]
    hosts: Counter[str] = Counter()
    for record in records:
        assert record.egress is not None
        hosts.update(record.egress.allowed)
        hosts.update(record.egress.denied)
    hosts.pop("(other)", None)
    hosts.pop("(unreadable)", None)
    return EgressSuggestion(agent, len(records), dict(hosts.most_common()))


def follow_log(target: str, *, follow: bool, poll_s: float = FOLLOW_POLL_S) -> Iterator[str]:
    """The stream-json log of run ``target`` (id or prefix), or of agent ``target``'s latest
    run, in chunks; with ``follow``, until the run has finished."""
    with StateStore() as state:
        record = _target_run(state, target)
        path = run_log_path(record.run_id)
        offset = 0
        while True:
            if path.exists():
                with path.open(encoding="utf-8") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
                if chunk:
                    yield chunk
            if not follow or state.get_run(record.run_id).status == "finished":
                return
            time.sleep(poll_s)


def pin_agent(config: Config, name: str) -> list[str]:
    """Pin agent ``name``'s directory as it is now (every run checks it is still that one);
    the warnings when it lies inside another agent's directory or holds one."""
    with StateStore() as state:
        pin_directory(state, name, config.agents[name])
    return [nesting.warning() for nesting in nested_agents(config, only=name)]


def forget_agent(name: str) -> None:
    """Drop the pin of a removed agent's directory."""
    with StateStore() as state:
        forget_directory(state, name)
