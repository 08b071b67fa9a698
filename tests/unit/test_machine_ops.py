"""The machine operations both faces share (issue 8): ``gc`` is one code path for the CLI
and MCP's ``dispatch_gc``, and ``ps``/``down`` see only this config unless told ``--all``.
Fake runtime; the real engine runs the same commands in tests/security/test_config_isolation.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from orchestrator.cli.app import app
from orchestrator.config import Agent, Config, ModelApi, Pool, Settings
from orchestrator.configfile import save_config
from orchestrator.dispatch import GC_AFTER_S, machine, open_service
from orchestrator.models import RunRecord
from orchestrator.run.sandbox import Owner, config_identity, container_spec
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.state import StateStore

DEAD = 2**22 + 11
"""A pid no process has: its containers are leftovers."""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "agents.yaml"
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(path))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    project = tmp_path / "proj"
    project.mkdir()
    save_config(Config(settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                                         pool=Pool(warm_per_agent=0)),
                       agents={"a": Agent(directory=str(project))}), path)
    return path


def make(runtime: FakeRuntime, directory: Path, scope: str, *, owner: int) -> str:
    runtime.ensure_network("n", internal=True, labels={})
    spec = container_spec(scope=scope, agent_name="a", agent=Agent(directory=str(directory)),
                          image="img", owner=Owner(1000, 1000), network="n",
                          suffix=f"{scope}{owner}", owner_pid=owner, lease_s=60)
    return runtime.create(spec)


def old_finished_run() -> RunRecord:
    long_ago = time.time() - GC_AFTER_S - 60
    return RunRecord(agent="a", task="t", status="finished", success=True,
                     exit_reason="completed", created_at=long_ago, finished_at=long_ago)


def test_collect_reaps_this_config_then_every_config_and_gc_is_the_same_path(
    config: Path, tmp_path: Path
) -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        async with open_service(runtime=runtime, warm=False, reattach=False,
                                gateway_host="127.0.0.1",
                                image_id=lambda ref: "sha256:fake") as service:
            mine = make(runtime, tmp_path, config_identity(config), owner=DEAD)
            theirs = make(runtime, tmp_path, "theirs", owner=DEAD)
            service.state.insert_run(old_finished_run())
            collected = await service.collect()
            assert (collected.runs, collected.containers) == (1, [mine])
            assert [c.id for c in runtime.list_managed()] == [theirs]
            collected = await service.collect(every_config=True)
            assert (collected.runs, collected.containers) == (0, [theirs])
            service.state.insert_run(old_finished_run())
            assert await service.gc() == 1  # MCP's dispatch_gc: the same code, defaults

    anyio.run(main)


def test_ps_lists_this_configs_containers_and_the_unfinished_runs(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = FakeRuntime()
    monkeypatch.setattr(machine, "engine", lambda: runtime)
    mine = make(runtime, tmp_path, config_identity(config), owner=os.getpid())
    theirs = make(runtime, tmp_path, "theirs", owner=os.getpid())
    running = RunRecord(agent="a", task="t", status="running")
    with StateStore() as state:
        state.insert_run(running)
    result = CliRunner().invoke(app, ["ps"])
    assert result.exit_code == 0, result.output
    assert mine[:12] in result.output and theirs[:12] not in result.output
    assert "1 run(s) not finished" in result.output and running.run_id in result.output
    every = CliRunner().invoke(app, ["ps", "--all"])
    assert mine[:12] in every.output and theirs[:12] in every.output
    assert every.output.splitlines()[0].split()[:2] == ["CONTAINER", "CONFIG"]
