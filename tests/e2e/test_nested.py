"""Nested dispatch for real (issue 9): the pinned claude in its container calls the
orchestrator's ``ad-sandbox`` MCP server on the gateway's ``/mcp`` with its run token.

The stub model steers claude: ``[[tool: mcp__ad-sandbox__dispatch {...}]]`` makes it call the
tool, and its next answer is ``tool result: <the tool's text>``, so the parent's answer holds
the child's result.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.models import RunRecord
from orchestrator.state import StateStore
from tests.docker.conftest import agent_image, docker_client
from tests.docker.support import (
    AD_SANDBOX,
    agent_containers,
    cli_env,
    run_cli,
    run_json,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

__all__ = ["agent_image", "docker_client"]

CHAIN = {"parent": ["child"], "child": ["grandchild"], "grandchild": [], "other": []}
PRICES = {"claude": [1.0, 1.0]}
"""USD per million tokens: each stub turn costs a little, so spend shows in the ledger."""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def dispatch(agent: str, task: str) -> str:
    return f"[[tool: mcp__ad-sandbox__dispatch {json.dumps({'agent': agent, 'task': task})}]]"


def setup(home: Path, tmp_path: Path, **settings: Any) -> None:
    agents = {}
    for name, targets in CHAIN.items():
        folder = tmp_path / "projects" / name
        folder.mkdir(parents=True)
        (folder / "README.md").write_text(f"# {name}\n")
        agents[name] = {"directory": str(folder), "dispatch_to": targets}
    write_config(home, agents, **settings)


def records(home: Path) -> list[RunRecord]:
    with StateStore(home / "state" / "state.db") as store:
        return store.list_runs(limit=100)


def children(home: Path, run_id: str) -> list[RunRecord]:
    return [r for r in records(home) if r.parent_id == run_id]


def test_parent_gets_the_childs_answer_and_shares_its_root(
        home: Path, tmp_path: Path, agent_image: object) -> None:
    setup(home, tmp_path, model_api={"upstream": "stub", "credential": None, "prices": PRICES})
    code, result = run_json(home, "parent", dispatch("child", "[[reply: from-child]]"))
    assert code == 0, result
    assert "from-child" in result["result"]
    [child] = children(home, result["run_id"])
    parent = next(r for r in records(home) if r.run_id == result["run_id"])
    assert (child.agent, child.depth, child.success) == ("child", 1, True)
    assert child.root_id == parent.root_id
    with StateStore(home / "state" / "state.db") as store:
        tree = store.spent_root(parent.root_id)
        own = store.spent_run(parent.run_id)
        child_spent = store.spent_run(child.run_id)
    assert child_spent > 0
    assert tree == pytest.approx(own + child_spent)
    assert f"child: {child.run_id} child finished" in run_cli(home, "job", parent.run_id).stdout
    assert f"parent_run_id: {parent.run_id}" in run_cli(home, "job", child.run_id).stdout


def test_refusals_depth_and_dispatch_to(home: Path, tmp_path: Path, agent_image: object) -> None:
    setup(home, tmp_path, max_dispatch_depth=1)
    _, outside = run_json(home, "parent", dispatch("other", "[[reply: no]]"))
    assert "dispatch_to" in outside["result"], outside
    assert children(home, outside["run_id"]) == []
    _, deep = run_json(home, "parent",
                       dispatch("child", dispatch("grandchild", "[[reply: too-deep]]")))
    assert "max_dispatch_depth = 1" in deep["result"], deep
    assert not [r for r in records(home) if r.agent == "grandchild"]


def test_three_levels_with_one_slot(home: Path, tmp_path: Path, agent_image: object) -> None:
    setup(home, tmp_path, max_concurrency=1)
    code, result = run_json(home, "parent",
                            dispatch("child", dispatch("grandchild", "[[reply: deep-answer]]")))
    assert code == 0, result
    assert "deep-answer" in result["result"]
    [child] = children(home, result["run_id"])
    [grandchild] = children(home, child.run_id)
    assert (child.depth, grandchild.depth) == (1, 2)


def test_killing_the_parent_kills_the_child(home: Path, tmp_path: Path, agent_image: object,
                                            docker_client: Any) -> None:
    setup(home, tmp_path)
    task = dispatch("child", "[[sleep: 120]] never answered")
    proc = subprocess.Popen([AD_SANDBOX, "run", "parent", "--", task], env=cli_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        child = wait_for(lambda: next((r for r in records(home) if r.agent == "child"
                                       and r.status == "running"), None), 120, "the child")
        time.sleep(1)  # the child's claude is waiting on the model
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        ended = wait_for(lambda: next((r for r in records(home) if r.run_id == child.run_id
                                       and r.status == "finished"), None), 30, "the child's end")
        assert time.monotonic() - began < 2.0
        assert ended.exit_reason == "cancelled"
        # The note naming the parent follows the end by a moment (it is written once the
        # cancel has been recorded).
        wait_for(lambda: child.parent_id in "".join(
            (r.error or "") + (r.hint or "") for r in records(home) if r.run_id == child.run_id),
            5, "the child's record to name its parent")
        wait_for(lambda: not [c for c in agent_containers(docker_client, "child", home)
                              if c.status == "running"], 30, "the child's container to go")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
