"""Issue 7: the host never lets the agent's repository run a program.

The cache key is computed on the host from the agent's project before each run. An agent
that plants git configuration (fsmonitor, hooks, ``core.*`` programs, filter drivers,
includes, a ``.git`` gitfile) inside its container must not get it executed on the host the
next time a run of that agent is keyed. Every planted command touches a marker under this
test's tmp dir, which is not mounted in the container: the marker can only appear if the
host runs the command. The project belongs to another uid, as in the default set-up where
the orchestrator runs as root: a host ``git`` would need ``safe.directory=*`` to answer.

The cache must still tell a changed project from an unchanged one, and a project whose state
cannot be read safely is a miss, never a hit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docker.support import run_json, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AGENT = "hostgit"
OWNER = 4321
GIT = "git -c user.email=agent@example.invalid -c user.name=agent"
INIT = f"cd /workspace && git init -q && {GIT} add -A && {GIT} commit -qm init"


def _hook(path: str, marker: Path) -> str:
    return f"printf '#!/bin/sh\\ntouch {marker}\\n' > {path} && chmod +x {path}"


def plant(case: str, marker: Path) -> str:
    """The shell the agent runs inside its container to plant ``case``."""
    run = f"touch {marker}"
    hooks = ("post-index-change", "pre-commit", "post-commit", "post-checkout",
             "reference-transaction", "pre-auto-gc", "fsmonitor-watchman", "post-merge")
    plants = {
        "fsmonitor": f"git config core.fsmonitor '{run}'",
        "hooks": " && ".join(_hook(f".git/hooks/{name}", marker) for name in hooks),
        "hooks_path": ("mkdir -p .githooks && "
                       + " && ".join(_hook(f".githooks/{name}", marker) for name in hooks)
                       + " && git config core.hooksPath .githooks"),
        "core_programs": " && ".join(
            f"git config {key} '{run}'"
            for key in ("core.pager", "core.editor", "core.sshCommand", "core.askPass",
                        "core.gitProxy", "sequence.editor", "diff.external", "gpg.program",
                        "credential.helper", "pager.status")),
        "filter_clean": ("printf '* filter=x\\n' > .gitattributes && "
                         f"git config filter.x.clean '{run}; cat' && "
                         f"git config filter.x.smudge '{run}; cat' && "
                         "git config filter.x.required true"),
        "filter_process": ("printf '* filter=y\\n' > .gitattributes && "
                           f"git config filter.y.process '{run}'"),
        "include": (f"git config --file .git/evil.cfg core.fsmonitor '{run}' && "
                    "git config include.path evil.cfg"),
        "include_if": (f"git config --file .git/evil2.cfg core.fsmonitor '{run}' && "
                       "git config includeIf.gitdir:/.path evil2.cfg"),
        "gitfile": (f"mv .git .elsewhere && git --git-dir=.elsewhere config core.fsmonitor "
                    f"'{run}' && printf 'gitdir: .elsewhere\\n' > .git"),
    }
    # The touch makes README.md stat-dirty, so a host `git status` re-reads it (filters)
    # and rewrites the index (post-index-change).
    return f"{INIT} && {plants[case]} && sleep 1 && touch README.md && echo PLANTED"


def _own(project: Path) -> None:
    for root, dirs, files in os.walk(project):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), OWNER, OWNER, follow_symlinks=False)
    os.chown(project, OWNER, OWNER)


@pytest.fixture
def agent_home(home: Path, project: Path) -> Path:
    _own(project)
    write_config(home, {AGENT: {"directory": str(project)}})
    return home


def run(home: Path, task: str) -> dict[str, object]:
    code, result = run_json(home, AGENT, task)
    assert code == 0 and result["success"], result
    return result


CASES = ("fsmonitor", "hooks", "hooks_path", "core_programs", "filter_clean",
         "filter_process", "include", "include_if", "gitfile")


@pytest.mark.parametrize("case", CASES)
def test_planted_git_config_never_runs_on_the_host(
    agent_home: Path, project: Path, tmp_path: Path, case: str
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    marker = markers / case
    planted = run(agent_home, f"[[bash: {plant(case, marker)}]]")
    assert "PLANTED" in str(planted["result"]), planted
    assert (project / ".git").exists()
    # The next run is keyed from the planted project (and again once more, cache warm).
    run(agent_home, "[[reply: second run]]")
    run(agent_home, "[[reply: second run]]")
    assert not marker.exists(), f"the host executed the agent's {case} setting"
    assert list(markers.iterdir()) == []


def test_the_cache_still_tells_changed_from_unchanged(agent_home: Path, project: Path) -> None:
    run(agent_home, f"[[bash: {INIT} && echo READY]]")
    ask = "[[reply: what is in the project?]]"
    assert not run(agent_home, ask)["cached"]
    assert run(agent_home, ask)["cached"], "an unchanged project must hit"

    run(agent_home, "[[bash: echo more >> /workspace/README.md]]")  # uncommitted edit
    assert not run(agent_home, ask)["cached"], "an edit must miss"
    assert run(agent_home, ask)["cached"]

    run(agent_home, "[[bash: echo new > /workspace/new.txt]]")  # a new untracked file
    assert not run(agent_home, ask)["cached"], "a new file must miss"
    assert run(agent_home, ask)["cached"]

    run(agent_home, f"[[bash: cd /workspace && {GIT} add -A && {GIT} commit -qm two]]")
    assert not run(agent_home, ask)["cached"], "a commit must miss"
    assert run(agent_home, ask)["cached"]


@pytest.mark.parametrize("odd", [
    "mv .git .real && ln -s .real .git",                  # .git is a symlink
    "mv .git .real && printf 'gitdir: .real\\n' > .git",  # .git is a gitfile
    "rm .git/HEAD && ln -s /etc/hostname .git/HEAD",      # HEAD points out of the project
    "mv .git/refs/heads .git/h && ln -s /etc .git/refs/heads",  # refs lead out of it
])
def test_an_unknown_project_state_is_a_miss_not_a_hit(agent_home: Path, odd: str) -> None:
    run(agent_home, f"[[bash: {INIT} && cd /workspace && {odd} && echo ODD]]")
    ask = "[[reply: is this cached?]]"
    first, second = run(agent_home, ask), run(agent_home, ask)
    assert not first["cached"] and not second["cached"], "an unknown state must not hit"
