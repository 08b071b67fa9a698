"""``add``, ``update``, ``remove``, ``list``, ``describe`` through the real Typer app."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli.app import app  # importing orchestrator.cli registers commands
from orchestrator.configfile import load_config


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "agents.yaml"
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(path))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))  # directory pins
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    directory = tmp_path / "infra"
    directory.mkdir()
    return directory


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_usage_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert " — " in lines[0]  # a reason and a next step
    for fragment in fragments:
        assert fragment in lines[0]


def test_add_stores_every_option(cfg: Path, project: Path, tmp_path: Path) -> None:
    other = tmp_path / "web"
    other.mkdir()
    assert run("add", "web", str(other)).exit_code == 0
    result = run(
        "add", "infra", str(project),
        "--description", "Docker hosts", "--model", "sonnet", "--timeout", "600",
        "--max-budget-usd", "0.5", "--permission-mode", "acceptEdits",
        "--allowed-tool", "Read", "--allowed-tool", "Bash(git:*)",
        "--disallowed-tool", "WebFetch", "--capability", "docker",
        "--instructions", "Be brief.", "--mount", "ro", "--image", "me/infra:1",
        "--cpus", "1.5", "--memory", "1g", "--pids", "256", "--tmp-size", "64m",
        "--egress", "allowlist", "--allow-host", "example.org",
        "--secret", "DB_URL=env:INFRA_DB_URL", "--secret", "KUBE=file:~/.kube/x",
        "--dispatch-to", "web",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "added agent infra" in result.stdout
    agent = load_config(cfg).agents["infra"]
    assert agent.directory == str(project.resolve())
    assert (agent.description, agent.model, agent.timeout) == ("Docker hosts", "sonnet", 600)
    assert (agent.max_budget_usd, agent.permission_mode) == (0.5, "acceptEdits")
    assert agent.allowed_tools == ["Read", "Bash(git:*)"]
    assert agent.disallowed_tools == ["WebFetch"]
    assert agent.capabilities == ["docker"]
    assert (agent.instructions, agent.mount, agent.image) == ("Be brief.", "ro", "me/infra:1")
    assert agent.resources.model_dump() == {
        "cpus": 1.5, "memory": "1g", "pids": 256, "tmp_size": "64m"
    }  # fmt: skip
    assert agent.network.egress == "allowlist"
    assert agent.allow_hosts == ["example.org"]
    assert {k: v.model_dump() for k, v in agent.secrets.items()} == {
        "DB_URL": {"env": "INFRA_DB_URL"}, "KUBE": {"file": "~/.kube/x"}
    }  # fmt: skip
    assert agent.dispatch_to == ["web"]


def test_add_stores_the_directory_absolute(
    cfg: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.parent)
    assert run("add", "infra", "infra").exit_code == 0
    assert load_config(cfg).agents["infra"].directory == str(project.resolve())


def test_add_existing_name_suggests_update(cfg: Path, project: Path) -> None:
    assert run("add", "infra", str(project)).exit_code == 0
    assert_usage_error(run("add", "infra", str(project)), "already exists", "ad-sandbox update")


@pytest.mark.parametrize("name", ["bad name", "_under", "a" * 64, "dot.ted"])
def test_add_bad_name(cfg: Path, project: Path, name: str) -> None:
    assert_usage_error(run("add", name, str(project)), "is not valid")
    assert not cfg.exists()


def test_add_missing_directory(cfg: Path, tmp_path: Path) -> None:
    assert_usage_error(run("add", "infra", str(tmp_path / "nope")), "does not exist")


def test_add_file_instead_of_directory(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert_usage_error(run("add", "infra", str(tmp_path / "f")), "is not a directory")


def test_add_outside_allowed_roots(cfg: Path, project: Path, tmp_path: Path) -> None:
    cfg.parent.mkdir()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok").mkdir()
    cfg.write_text(f"settings:\n  allowed_roots: [{allowed}]\n")
    assert_usage_error(run("add", "infra", str(project)), "outside settings.allowed_roots")
    assert run("add", "ok", str(allowed / "ok")).exit_code == 0


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--max-budget-usd", "-1", "agents.infra.max_budget_usd: -1.0 — must be greater"),
        ("--timeout", "0", "agents.infra.timeout: 0.0 — must be greater than 0"),
        ("--mount", "rx", "agents.infra.mount: 'rx' — must be 'rw' or 'ro'"),
        ("--permission-mode", "yolo", "agents.infra.permission_mode"),
        ("--memory", "lots", "agents.infra.resources.memory"),
        ("--egress", "anywhere", "agents.infra.network.egress"),
        ("--dispatch-to", "ghost", "unknown agent 'ghost'"),
        ("--secret", "NOEQUALS", "is not NAME=env:VAR or NAME=file:PATH"),
        ("--secret", "X=vault:abc", "is not NAME=env:VAR or NAME=file:PATH"),
        ("--secret", "bad-name=env:X", "secret name 'bad-name'"),
    ],
)
def test_add_bad_values(cfg: Path, project: Path, option: str, value: str, fragment: str) -> None:
    assert_usage_error(run("add", "infra", str(project), option, value), fragment)
    assert not cfg.exists() or "infra" not in load_config(cfg).agents


def test_malformed_config_is_one_line(cfg: Path, project: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text("agents:\n  a: [\n")
    assert_usage_error(run("list"), "agents.yaml line 3", "malformed YAML")
    assert_usage_error(run("add", "infra", str(project)), "malformed YAML")


def test_unknown_key_in_config_is_one_line(cfg: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text("agents:\n  a:\n    directory: /x\n    colour: red\n")
    assert_usage_error(run("describe", "a"), "line 4: agents.a.colour — unknown key")


def test_negative_budget_in_config_is_one_line(cfg: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text("settings:\n  budget:\n    daily: -3\n")
    assert_usage_error(run("list"), "line 3: settings.budget.daily: -3")


def test_update_changes_only_given_fields(cfg: Path, project: Path) -> None:
    run("add", "infra", str(project), "--description", "d", "--memory", "1g", "--timeout", "60")
    result = run("update", "infra", "--cpus", "2", "--timeout", "90")
    assert result.exit_code == 0, result.output
    agent = load_config(cfg).agents["infra"]
    assert (agent.description, agent.timeout) == ("d", 90)
    assert (agent.resources.cpus, agent.resources.memory) == (2, "1g")


def test_update_directory_and_lists(cfg: Path, project: Path, tmp_path: Path) -> None:
    run("add", "infra", str(project), "--allowed-tool", "Read")
    moved = tmp_path / "moved"
    moved.mkdir()
    assert (
        run("update", "infra", "--directory", str(moved), "--allowed-tool", "Bash").exit_code == 0
    )
    agent = load_config(cfg).agents["infra"]
    assert (agent.directory, agent.allowed_tools) == (str(moved.resolve()), ["Bash"])


def test_update_unknown_agent(cfg: Path) -> None:
    assert_usage_error(run("update", "ghost", "--timeout", "5"), "unknown agent 'ghost'")


def test_update_without_options(cfg: Path, project: Path) -> None:
    run("add", "infra", str(project))
    assert_usage_error(run("update", "infra"), "nothing to update")


def test_update_bad_value_keeps_file(cfg: Path, project: Path) -> None:
    run("add", "infra", str(project))
    before = cfg.read_text()
    assert_usage_error(run("update", "infra", "--timeout", "-5"), "agents.infra.timeout: -5.0")
    assert cfg.read_text() == before


def test_remove_drops_references(cfg: Path, project: Path) -> None:
    run("add", "infra", str(project))
    run("add", "web", str(project), "--dispatch-to", "infra")
    cfg.write_text(cfg.read_text() + "groups:\n  g:\n    members: [{agent: infra}]\n")
    result = run("remove", "infra")
    assert result.exit_code == 0, result.output
    assert "agents.web.dispatch_to" in result.stdout and "groups.g.members" in result.stdout
    config = load_config(cfg)
    assert set(config.agents) == {"web"}
    assert config.agents["web"].dispatch_to == []
    assert config.groups["g"].members == []
    assert project.is_dir()  # the project itself is never touched


def test_remove_unknown_agent(cfg: Path) -> None:
    assert_usage_error(run("remove", "ghost"), "unknown agent 'ghost'", "ad-sandbox list")


def test_list_empty(cfg: Path) -> None:
    result = run("list")
    assert result.exit_code == 0
    assert "no agents registered" in result.stdout


def test_list_shows_health(cfg: Path, project: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    run("add", "infra", str(project), "--description", "Docker hosts")
    run("add", "old", str(gone))
    gone.rmdir()
    result = run("list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[0:3] == ["infra", str(project.resolve()), "ok"]
    assert lines[0].endswith("Docker hosts")
    assert lines[1].split()[0:3] == ["old", str(gone.resolve()), "missing"]


def test_list_unreadable(cfg: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("add", "infra", str(project))
    # Tests run as root here, who can read anything: fake the permission answer.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert json.loads(run("list", "--json").stdout)[0]["health"] == "unreadable"


def test_list_json(cfg: Path, project: Path) -> None:
    run("add", "infra", str(project), "--description", "d")
    result = run("list", "--json")
    assert json.loads(result.stdout) == [
        {"name": "infra", "directory": str(project.resolve()), "health": "ok", "description": "d"}
    ]


def test_describe_shows_secret_sources_only(
    cfg: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFRA_DB_URL", "postgres://user:hunter2@db")
    run("add", "infra", str(project), "--secret", "DB_URL=env:INFRA_DB_URL", "--model", "sonnet")
    text = run("describe", "infra")
    assert text.exit_code == 0
    assert "DB_URL=env:INFRA_DB_URL" in text.stdout
    assert "model:" in text.stdout and "sonnet" in text.stdout
    data = json.loads(run("describe", "infra", "--json").stdout)
    assert data["secrets"] == {"DB_URL": "env:INFRA_DB_URL"}
    assert data["resources"]["memory"] == "2g"
    assert data["health"] == "ok"
    for output in (text.stdout, json.dumps(data)):
        assert "hunter2" not in output


def test_describe_unknown_agent(cfg: Path) -> None:
    assert_usage_error(run("describe", "ghost"), "unknown agent 'ghost'")
