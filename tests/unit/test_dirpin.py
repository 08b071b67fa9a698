"""Agent directory pins: a swapped directory is refused before any container exists.

Beside the real attack (tests/security/test_mount_redirect.py): the pin logic and storage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.app import app
from orchestrator.config import Agent, Config
from orchestrator.errors import DirectoryChanged, UsageError
from orchestrator.run.dirpin import nested_agents, pin_directory, pin_problem, verify_directory
from orchestrator.state import StateStore


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateStore]:
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    with StateStore() as store:
        yield store


@pytest.fixture
def inner(tmp_path: Path) -> Path:
    folder = tmp_path / "outer" / "inner"
    folder.mkdir(parents=True)
    return folder


def test_a_pinned_directory_passes_and_its_stat_is_returned(
    state: StateStore, inner: Path
) -> None:
    agent = Agent(directory=str(inner))
    pin_directory(state, "b", agent)
    assert verify_directory("b", agent, state).st_ino == inner.stat().st_ino


def test_a_directory_replaced_by_a_symlink_is_refused(
    state: StateStore, inner: Path, tmp_path: Path
) -> None:
    agent = Agent(directory=str(inner))
    pin_directory(state, "b", agent)
    target = tmp_path / "host"
    target.mkdir()
    inner.rename(tmp_path / "kept")
    inner.symlink_to(target)
    with pytest.raises(DirectoryChanged, match="became a symlink") as caught:
        verify_directory("b", agent, state)
    assert caught.value.exit_code == 2 and str(inner) in caught.value.message
    assert "ad-sandbox update b --directory" in caught.value.hint
    assert pin_problem(state, "b", agent) is not None


def test_a_parent_replaced_by_a_symlink_is_refused(
    state: StateStore, inner: Path, tmp_path: Path
) -> None:
    agent = Agent(directory=str(inner))
    pin_directory(state, "b", agent)
    outer = inner.parent
    outer.rename(tmp_path / "moved")
    (tmp_path / "elsewhere" / "inner").mkdir(parents=True)
    outer.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DirectoryChanged, match=f"{outer} became a symlink"):
        verify_directory("b", agent, state)


def test_another_directory_in_its_place_is_refused(state: StateStore, inner: Path,
                                                   tmp_path: Path) -> None:
    agent = Agent(directory=str(inner))
    pin_directory(state, "b", agent)
    inner.rename(tmp_path / "kept")
    inner.mkdir()
    with pytest.raises(DirectoryChanged, match="replaced by another directory"):
        verify_directory("b", agent, state)
    inner.rmdir()
    (tmp_path / "kept").rename(inner)
    verify_directory("b", agent, state)  # put back: the same directory again


def test_first_use_pins_and_a_changed_config_re_pins(state: StateStore, inner: Path,
                                                    tmp_path: Path) -> None:
    agent = Agent(directory=str(inner))
    verify_directory("b", agent, state)  # trust on first use
    inner.rename(tmp_path / "kept")
    inner.mkdir()
    with pytest.raises(DirectoryChanged):
        verify_directory("b", agent, state)
    moved = Agent(directory=str(tmp_path / "kept"))  # the user pointed the config elsewhere
    verify_directory("b", moved, state)


def test_a_missing_directory_is_a_usage_error(state: StateStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        verify_directory("b", Agent(directory=str(tmp_path / "gone")), state)


def test_a_hand_written_path_through_a_symlink_is_pinned_resolved(
    state: StateStore, inner: Path, tmp_path: Path
) -> None:
    (tmp_path / "alias").symlink_to(inner.parent)
    agent = Agent(directory=str(tmp_path / "alias" / "inner"))
    verify_directory("b", agent, state)
    pin = state.directory_pin(os.path.realpath(tmp_path / "agents.yaml"), "b")
    assert pin is not None and pin.resolved == str(inner)
    (tmp_path / "alias").unlink()
    (tmp_path / "other" / "inner").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "other")
    with pytest.raises(DirectoryChanged, match="now resolves to"):
        verify_directory("b", agent, state)


def test_nested_agents_are_found(inner: Path, tmp_path: Path) -> None:
    (tmp_path / "apart").mkdir()
    config = Config(agents={"a": Agent(directory=str(inner.parent)),
                            "b": Agent(directory=str(inner)),
                            "c": Agent(directory=str(tmp_path / "apart")),
                            "d": Agent(directory=str(inner))})
    pairs = {(n.inner, n.outer) for n in nested_agents(config)}
    assert pairs == {("b", "a"), ("d", "a"), ("b", "d")}
    assert {(n.inner, n.outer) for n in nested_agents(config, only="c")} == set()


def test_cli_add_pins_and_warns_update_re_pins(state: StateStore, inner: Path,
                                               tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["add", "a", str(inner.parent)]).exit_code == 0
    added = runner.invoke(app, ["add", "b", str(inner)])
    assert added.exit_code == 0, added.output
    assert "warning:" in added.stderr and "lies inside agent a's" in added.stderr
    inner.rename(tmp_path / "kept")
    inner.mkdir()
    with pytest.raises(DirectoryChanged):
        verify_directory("b", Agent(directory=str(inner)), state)
    assert runner.invoke(app, ["update", "b", "--directory", str(inner)]).exit_code == 0
    verify_directory("b", Agent(directory=str(inner)), state)
    assert runner.invoke(app, ["remove", "b"]).exit_code == 0
    assert state.directory_pin(os.path.realpath(tmp_path / "agents.yaml"), "b") is None
