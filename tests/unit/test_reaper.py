"""The reaper removes what no live run owns, and nothing else (fake runtime)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from orchestrator.config import Agent
from orchestrator.models import RunRecord
from orchestrator.run.reaper import reap
from orchestrator.run.sandbox import Owner, container_spec
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.state import StateStore

DEAD = 2**22 + 11
ME = os.getpid()


@pytest.fixture
def state(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def make(runtime: FakeRuntime, tmp_path: Path, *, owner: int, lease_s: float = 60,
         run_id: str = "", suffix: str = "x") -> str:
    runtime.ensure_network("n", internal=True, labels={})
    spec = container_spec(scope="cfg", agent_name="a", agent=Agent(directory=str(tmp_path)),
                          image="img", owner=Owner(1000, 1000), network="n", suffix=suffix,
                          owner_pid=owner, lease_s=lease_s, run_id=run_id)
    return runtime.create(spec)


def test_dead_owner_and_expired_lease_are_reaped(state: StateStore, tmp_path: Path) -> None:
    runtime = FakeRuntime()
    dead = make(runtime, tmp_path, owner=DEAD, suffix="dead")
    expired = make(runtime, tmp_path, owner=ME, lease_s=-5, suffix="expired")
    mine = make(runtime, tmp_path, owner=ME, suffix="mine")
    detached = make(runtime, tmp_path, owner=0, lease_s=3600, suffix="detached")
    removed = reap(runtime, state, scope="cfg")
    assert set(removed) == {dead, expired}
    assert {c.id for c in runtime.list_managed()} == {mine, detached}


def test_a_finished_runs_container_is_reaped_and_an_unknown_run_is_left(
    state: StateStore, tmp_path: Path
) -> None:
    runtime = FakeRuntime()
    done = RunRecord(agent="a", status="finished", owner_pid=ME)
    state.insert_run(done)
    finished = make(runtime, tmp_path, owner=ME, run_id=done.run_id, suffix="fin")
    foreign = make(runtime, tmp_path, owner=ME, run_id="other-state-dir", suffix="foreign")
    assert reap(runtime, state, scope="cfg") == [finished]
    assert [c.id for c in runtime.list_managed()] == [foreign]


def test_runs_of_a_dead_orchestrator_end_truthfully(state: StateStore) -> None:
    running = RunRecord(agent="a", status="running", owner_pid=DEAD)
    alive = RunRecord(agent="a", status="running", owner_pid=ME)
    state.insert_run(running)
    state.insert_run(alive)
    reap(FakeRuntime(), state, scope="cfg", now=time.time())
    ended = state.get_run(running.run_id)
    assert ended.status == "finished" and ended.exit_reason == "crashed"
    assert f"process {DEAD}" in (ended.error or "")
    assert state.get_run(alive.run_id).status == "running"


def test_leases_of_vanished_containers_are_dropped(state: StateStore) -> None:
    state.add_container("gone", agent="a", owner_pid=ME, lease_s=60)
    reap(FakeRuntime(), state, scope="cfg")
    assert state.containers() == []
