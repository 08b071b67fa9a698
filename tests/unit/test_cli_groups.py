"""``group add|list|inspect|update|remove`` through the real Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli.app import app
from orchestrator.configfile import load_config


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "agents.yaml"
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(path))
    for name in ("infra", "web"):
        (tmp_path / name).mkdir()
        assert (
            run("add", name, str(tmp_path / name), "--description", f"{name} stuff").exit_code == 0
        )
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert fragment in result.stderr


def test_add_list_inspect(cfg: Path) -> None:
    result = run(
        "group", "add", "platform", "--description", "ops", "--shared-context", "prod is eu-1",
        "--member", "infra=runtime questions", "--member", "web",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    group = load_config(cfg).groups["platform"]
    assert [(m.agent, m.use_for) for m in group.members] == [
        ("infra", "runtime questions"), ("web", "")
    ]  # fmt: skip
    assert json.loads(run("group", "list", "--json").stdout) == [
        {"name": "platform", "description": "ops", "members": ["infra", "web"]}
    ]
    assert "platform  infra, web  ops" in run("group", "list").stdout
    data = json.loads(run("group", "inspect", "platform", "--json").stdout)
    assert data["shared_context"] == "prod is eu-1"
    assert data["members"][0]["description"] == "infra stuff"
    text = run("group", "inspect", "platform").stdout
    assert "infra (" in text and "— runtime questions" in text


def test_update_and_remove(cfg: Path) -> None:
    run("group", "add", "platform", "--member", "infra")
    assert run("group", "update", "platform", "--member", "web").exit_code == 0
    group = load_config(cfg).groups["platform"]
    assert [m.agent for m in group.members] == ["web"]
    assert run("group", "update", "platform", "--description", "d").exit_code == 0
    assert [m.agent for m in load_config(cfg).groups["platform"].members] == ["web"]
    assert run("group", "remove", "platform").exit_code == 0
    assert load_config(cfg).groups == {}
    assert set(load_config(cfg).agents) == {"infra", "web"}


def test_errors(cfg: Path) -> None:
    one_line_error(run("group", "add", "p", "--member", "ghost"), "unknown agent 'ghost'")
    one_line_error(run("group", "add", "bad name"), "group name 'bad name' is not valid")
    run("group", "add", "p")
    one_line_error(run("group", "add", "p"), "already exists")
    one_line_error(run("group", "inspect", "q"), "unknown group 'q'")
    one_line_error(run("group", "remove", "q"), "unknown group 'q'")
    one_line_error(run("group", "update", "p"), "nothing to update")


def test_empty_list(cfg: Path) -> None:
    assert "no groups defined" in run("group", "list").stdout
