"""Per-config identity of engine objects (issue 7 item 5), fake runtime.

The real proofs run the attacks on the engine: tests/security/test_config_isolation.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from orchestrator.cli.app import app
from orchestrator.config import Agent
from orchestrator.dispatch import machine
from orchestrator.run.pool import WarmPool
from orchestrator.run.reaper import reap
from orchestrator.run.sandbox import (
    LABEL_CONFIG,
    SESSIONS_DIR,
    Owner,
    config_identity,
    container_name,
    container_spec,
    volume_name,
)
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.state import StateStore

DEAD = 2**22 + 11
ENGINE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def test_the_identity_is_stable_per_file_and_differs_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "agents.yaml", tmp_path / "b" / "agents.yaml"
    assert config_identity(a) == config_identity(tmp_path / "a" / ".." / "a" / "agents.yaml")
    assert config_identity(a) != config_identity(b)
    assert re.fullmatch(r"[0-9a-f]{12}", config_identity(a))


def test_names_carry_the_identity_and_stay_short_and_distinct() -> None:
    long_a, long_b = "x" * 62 + "a", "x" * 62 + "b"
    names = {volume_name("id1", long_a), volume_name("id1", long_b), volume_name("id2", long_a)}
    assert len(names) == 3
    assert all(len(n) <= 63 and ENGINE_NAME.fullmatch(n) for n in names)
    assert volume_name("id1", "proj") == "ad-sandbox-id1-proj"
    name = container_name("id1", long_a, "w" * 12)
    assert len(name) <= 128 and ENGINE_NAME.fullmatch(name) and "id1" in name


def make(runtime: FakeRuntime, tmp_path: Path, scope: str, *, owner: int) -> str:
    runtime.ensure_network("n", internal=True, labels={})
    spec = container_spec(scope=scope, agent_name="a", agent=Agent(directory=str(tmp_path)),
                          image="img", owner=Owner(1000, 1000), network="n",
                          suffix=f"{scope}{owner}", owner_pid=owner, lease_s=60)
    assert spec.labels[LABEL_CONFIG] == scope
    assert [m.source for m in spec.mounts if m.target == SESSIONS_DIR] == [volume_name(scope, "a")]
    return runtime.create(spec)


def test_the_reaper_never_touches_another_configs_containers(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    state = StateStore(tmp_path / "state.db")
    mine = make(runtime, tmp_path, "mine", owner=DEAD)
    theirs = make(runtime, tmp_path, "theirs", owner=DEAD)  # "dead" as seen from here
    state.add_container(theirs, agent="a", owner_pid=DEAD, lease_s=60)
    assert reap(runtime, state, scope="mine") == [mine]
    assert [c.id for c in runtime.list_managed()] == [theirs]
    assert [lease.container_id for lease in state.containers()] == [theirs]  # lease kept
    assert reap(runtime, state, scope=None) == [theirs]  # --all


def test_a_warm_container_of_another_config_is_never_claimed(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    state = StateStore(tmp_path / "state.db")
    agent, owner = Agent(directory=str(tmp_path)), Owner(1000, 1000)
    pool_a = WarmPool(runtime=runtime, state=state, network="n", scope="a")
    pool_b = WarmPool(runtime=runtime, state=state, network="n", scope="b")
    runtime.ensure_network("n", internal=True, labels={})

    async def main() -> tuple[list[str], str]:
        warm = await pool_a.fill("x", agent, "img", owner, 1)
        got = await pool_b.acquire("x", agent, "img", owner, "run-b", lease_s=60)
        return warm, got

    warm, got = anyio.run(main)
    assert got not in warm
    assert runtime.volume_owners == {volume_name("a", "x"): (1000, 1000),
                                     volume_name("b", "x"): (1000, 1000)}


@pytest.fixture
def cli_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "a" / "agents.yaml"))
    runtime = FakeRuntime()
    monkeypatch.setattr(machine, "engine", lambda: runtime)
    return runtime


def test_down_is_scoped_and_down_all_is_not(cli_runtime: FakeRuntime, tmp_path: Path) -> None:
    mine = config_identity(tmp_path / "a" / "agents.yaml")
    make(cli_runtime, tmp_path, mine, owner=os.getpid())
    theirs = make(cli_runtime, tmp_path, "theirs", owner=os.getpid())
    for scope in (mine, "theirs"):
        cli_runtime.prepare_volume(volume_name(scope, "a"), image="img", uid=1, gid=1,
                                   labels={"ad-sandbox.managed": "1", LABEL_CONFIG: scope})
    result = CliRunner().invoke(app, ["down", "--volumes"])
    assert result.exit_code == 0, result.output
    assert [c.id for c in cli_runtime.list_managed()] == [theirs]
    assert list(cli_runtime.volumes) == [volume_name("theirs", "a")]
    assert "kept network" in result.output
    result = CliRunner().invoke(app, ["down", "--volumes", "--all"])
    assert result.exit_code == 0, result.output
    assert cli_runtime.list_managed() == [] and cli_runtime.volumes == {}
