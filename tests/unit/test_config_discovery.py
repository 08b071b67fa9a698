"""Which agents file is in use (``--config`` > ``$AD_SANDBOX_CONFIG`` > ./ad-sandbox.yaml >
the git root's ad-sandbox.yaml > the user file), and relative directories in it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli.app import app
from orchestrator.cli.doctor import check_config
from orchestrator.config import Config
from orchestrator.configfile import load_config, update_config, validate_config
from orchestrator.errors import ConfigError
from orchestrator.paths import CONFIG_ENV, config_path, locate_config
from orchestrator.run.dirpin import config_key
from orchestrator.run.sandbox import config_identity


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository (``.git`` only; git is never run) with a subdirectory as the cwd, a
    user config home, and no ``$AD_SANDBOX_CONFIG``."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "sub").mkdir()
    monkeypatch.chdir(root / "sub")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    # Set, then removed: monkeypatch restores it, also after `--config` sets it.
    monkeypatch.setenv(CONFIG_ENV, "unused")
    monkeypatch.delenv(CONFIG_ENV)
    return root


def user_file(repo: Path) -> Path:
    path = repo.parent / "xdg" / "ad-sandbox" / "agents.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("agents: {}\n")
    return path


def project_file(directory: Path, text: str = "agents: {}\n",
                 name: str = "ad-sandbox.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_nothing_found_is_the_user_file_to_create(repo: Path) -> None:
    where = locate_config()
    assert where.path == repo.parent / "xdg" / "ad-sandbox" / "agents.yaml"
    assert (where.source, where.ignored) == ("the user file", ())


def test_the_order(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = user_file(repo)
    assert locate_config().path == user

    root = project_file(repo)
    where = locate_config()
    assert (where.path, where.source, where.ignored) == (root, "found at the git root", (user,))

    here = project_file(repo / "sub")
    where = locate_config()
    assert (where.path, where.source) == (here, "found in the current directory")
    assert where.ignored == (root, user)

    explicit = repo.parent / "elsewhere.yaml"
    monkeypatch.setenv(CONFIG_ENV, str(explicit))
    where = locate_config()
    assert where.path == explicit and CONFIG_ENV in where.source
    assert where.ignored == (here, root, user)


def test_a_parent_without_git_is_not_searched(repo: Path, tmp_path: Path) -> None:
    project_file(tmp_path)  # above the repository: never read
    (repo / ".git").rmdir()
    assert locate_config().source == "the user file"


def test_cwd_at_the_git_root_is_one_candidate(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    root = project_file(repo)
    assert (locate_config().path, locate_config().ignored) == (root, ())


def test_git_file_of_a_worktree_marks_the_root(repo: Path) -> None:
    (repo / ".git").rmdir()
    (repo / ".git").write_text("gitdir: /elsewhere/.git/worktrees/x\n")
    root = project_file(repo)
    assert locate_config().path == root


def test_yml_alone_is_read(repo: Path) -> None:
    here = project_file(repo / "sub", name="ad-sandbox.yml")
    assert locate_config().path == here


def test_both_spellings_are_refused_naming_both(repo: Path) -> None:
    project_file(repo / "sub")
    project_file(repo / "sub", name="ad-sandbox.yml")
    with pytest.raises(ConfigError) as info:
        config_path()
    message = info.value.one_line()
    assert "ad-sandbox.yaml and ad-sandbox.yml" in message
    assert "would read ad-sandbox.yaml" in message
    assert info.value.exit_code == 2

    result = run("list")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: two agents files in ")
    # Naming the file removes the ambiguity.
    chosen = repo / "sub" / "ad-sandbox.yml"
    assert run("--config", str(chosen), "list").exit_code == 0


def test_both_spellings_where_nothing_is_read_are_no_error(repo: Path) -> None:
    project_file(repo)
    project_file(repo, name="ad-sandbox.yml")
    here = project_file(repo / "sub")
    assert locate_config().path == here
    assert len(locate_config().ignored) == 2


def test_relative_directories_are_relative_to_the_file(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "proj").mkdir()
    path = project_file(repo, "agents:\n  web:\n    directory: ./proj\n"
                              "  up:\n    directory: ..\n")
    monkeypatch.chdir(tmp_path)  # the cwd does not matter once the file is found
    config = load_config(path)
    assert config.agents["web"].path == repo / "proj"
    assert config.agents["up"].path.resolve() == tmp_path
    # The file keeps the relative spelling through an update by the CLI or MCP.

    def add_other(current: Config) -> Config:
        whole = current.model_dump(mode="json", exclude_unset=True)
        whole["agents"]["other"] = {"directory": str(tmp_path)}
        return validate_config(whole)  # as the CLI and MCP edits do: no file in sight

    updated = update_config(add_other, path)
    assert updated.agents["web"].path == repo / "proj"
    assert "directory: ./proj" in path.read_text()


def test_relative_directories_in_the_user_file_too(repo: Path) -> None:
    user = user_file(repo)
    user.write_text("agents:\n  web:\n    directory: proj\n")
    assert load_config().agents["web"].path == user.parent / "proj"


def test_absolute_directories_compare_equal_whatever_file(tmp_path: Path) -> None:
    text = f"agents:\n  web:\n    directory: {tmp_path}\n"
    a, b = project_file(tmp_path, text), project_file(tmp_path, text, name="other.yaml")
    assert load_config(a) == load_config(b)
    assert Config.model_validate({"agents": {"w": {"directory": "x"}}}).agents["w"].path == (
        Path.cwd() / "x")  # a config from no file: relative to the cwd, as before


def test_add_stores_a_directory_below_the_file_relative(repo: Path) -> None:
    path = project_file(repo)
    (repo / "web").mkdir()
    (repo.parent / "outside").mkdir()
    assert run("add", "web", "../web").exit_code == 0  # the cwd is repo/sub
    assert run("add", "out", "../../outside").exit_code == 0
    assert run("add", "abs", str(repo / "web")).exit_code == 0
    agents = load_config(path).agents
    assert agents["web"].directory == "./web"
    assert agents["out"].directory == str((repo.parent / "outside").resolve())
    assert agents["abs"].directory == str((repo / "web").resolve())
    assert agents["web"].path == repo / "web"


def test_config_option_on_a_command(repo: Path, tmp_path: Path) -> None:
    project_file(repo / "sub", "agents:\n  here:\n    directory: .\n")
    chosen = tmp_path / "ci" / "agents.yaml"
    chosen.parent.mkdir()
    (tmp_path / "ci" / "proj").mkdir()
    chosen.write_text("agents:\n  ci:\n    directory: ./proj\n")
    result = run("--config", str(chosen), "list", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["health"]) for r in json.loads(result.stdout)] == [("ci", "ok")]
    # Children (serve, the demo's server) inherit the choice.
    assert os.environ[CONFIG_ENV] == str(chosen)


def test_config_option_with_a_relative_path(repo: Path) -> None:
    project_file(repo / "sub", "agents:\n  rel:\n    directory: .\n", name="mine.yaml")
    result = run("--config", "mine.yaml", "list", "--json")
    assert [r["name"] for r in json.loads(result.stdout)] == ["rel"]
    assert os.environ[CONFIG_ENV] == str(repo / "sub" / "mine.yaml")


def test_doctor_names_the_file_and_what_it_shadows(repo: Path) -> None:
    user = user_file(repo)
    here = project_file(repo / "sub")
    check, config = check_config()
    assert check.status == "ok" and config is not None
    assert check.detail.startswith(f"{here} (found in the current directory): 0 agents")
    assert check.detail.endswith(f"; ignored {user}")


def test_doctor_fails_on_both_spellings(repo: Path) -> None:
    project_file(repo)
    project_file(repo, name="ad-sandbox.yml")
    check, config = check_config()
    assert (check.status, check.exit_code, config) == ("fail", 2, None)
    assert "would read ad-sandbox.yaml" in check.detail


def test_identity_and_pins_follow_the_file_in_use(repo: Path) -> None:
    user = user_file(repo)
    assert config_identity(config_path()) == config_identity(user)
    here = project_file(repo / "sub")
    assert config_identity(config_path()) == config_identity(here) != config_identity(user)
    assert config_key() == os.path.realpath(here)
