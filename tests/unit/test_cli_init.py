"""``init``: the config it writes and the exact ``claude mcp add-json`` it runs."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli.app import app
from orchestrator.config import Settings
from orchestrator.configfile import load_config

FAKE_CLAUDE = """#!/bin/sh
printf '%s\\n' "$@" >> "{record}"
{behaviour}
"""


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf" / "agents.yaml"
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(path))
    return path


def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str = "") -> Path:
    """Put a ``claude`` on PATH that appends its argv (one per line) to a file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "claude-argv"
    script = bindir / "claude"
    script.write_text(FAKE_CLAUDE.format(record=record, behaviour=behaviour))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    return record


def no_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["init", *args])


def expected_spec(cfg: Path) -> dict[str, object]:
    return {
        "type": "stdio",
        "command": str(Path(sys.executable).parent / "ad-sandbox"),
        "args": ["serve"],
        "env": {"AD_SANDBOX_CONFIG": str(cfg)},
    }


def test_creates_config_with_settings(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_claude(tmp_path, monkeypatch)
    result = run()
    assert result.exit_code == 0, result.output
    assert f"created {cfg}" in result.stdout
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert "max_dispatch_depth: 3" in cfg.read_text()
    assert load_config(cfg).settings == Settings()


def test_registers_with_claude_exact_argv(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = fake_claude(tmp_path, monkeypatch)
    result = run()
    assert result.exit_code == 0, result.output
    argv = record.read_text().splitlines()
    assert argv[:3] == ["mcp", "add-json", "ad-sandbox"]
    assert argv[4:] == ["--scope", "user"]
    assert json.loads(argv[3]) == expected_spec(cfg)
    assert argv[3] == json.dumps(expected_spec(cfg), separators=(",", ":"))
    assert "registered MCP server ad-sandbox" in result.stdout


def test_without_the_override_no_env_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AD_SANDBOX_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    record = fake_claude(tmp_path, monkeypatch)
    assert run().exit_code == 0
    spec = json.loads(record.read_text().splitlines()[3])
    assert spec == {
        "type": "stdio",
        "command": str(Path(sys.executable).parent / "ad-sandbox"),
        "args": ["serve"],
    }
    assert (tmp_path / "xdg" / "ad-sandbox" / "agents.yaml").exists()


def test_no_claude_prints_the_command(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_claude(tmp_path, monkeypatch)
    result = run()
    assert result.exit_code == 0
    assert "claude is not on PATH" in result.stdout
    spec = json.dumps(expected_spec(cfg), separators=(",", ":"))
    assert f"claude mcp add-json ad-sandbox '{spec}' --scope user" in result.stdout


def test_existing_config_is_left_alone(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_claude(tmp_path, monkeypatch)
    cfg.parent.mkdir()
    cfg.write_text("agents:\n  a: {directory: /x}\n")
    result = run()
    assert result.exit_code == 0
    assert "already exists" in result.stdout
    assert cfg.read_text() == "agents:\n  a: {directory: /x}\n"


def test_force_rewrites_and_keeps_a_backup(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_claude(tmp_path, monkeypatch)
    cfg.parent.mkdir()
    cfg.write_text("agents:\n  a: {directory: /x}\n")
    result = run("--force")
    assert result.exit_code == 0, result.output
    assert load_config(cfg).agents == {}
    assert (cfg.parent / "agents.yaml.bak").read_text() == "agents:\n  a: {directory: /x}\n"


def test_already_registered_is_fine(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behaviour = "echo 'MCP server ad-sandbox already exists in user config' >&2; exit 1"
    fake_claude(tmp_path, monkeypatch, behaviour)
    result = run()
    assert result.exit_code == 0
    assert "already registered" in result.stdout


def test_claude_failing_warns_with_the_command(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_claude(tmp_path, monkeypatch, "echo 'config dir not writable' >&2; exit 3")
    result = run()
    assert result.exit_code == 0
    assert "warning: claude mcp add-json failed (config dir not writable)" in result.stderr
    assert "claude mcp add-json ad-sandbox" in result.stderr
