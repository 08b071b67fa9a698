"""The project-state probe: it tells changes apart, runs nothing and follows no symlink.

The attack itself (a real agent planting git settings in its container) is in
tests/security/test_host_git.py; here the probe's logic on local directories.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.dispatch import cachekey as cache
from orchestrator.dispatch.projectstate import Limits, StateUnknown, fingerprint

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("hello\n")
    (folder / "src").mkdir()
    (folder / "src" / "main.py").write_text("print(1)\n")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "one")
    return folder


def git(folder: Path, *args: str) -> None:
    # Only on repositories this test made, before any hostile setting is planted.
    subprocess.run([*GIT, "-C", str(folder), *args], check=True, capture_output=True)


def test_same_state_same_key(repo: Path) -> None:
    assert fingerprint(repo) == fingerprint(repo)


def test_a_small_project_is_probed_in_milliseconds(repo: Path) -> None:
    started = time.perf_counter()
    for _ in range(20):
        fingerprint(repo)
    assert (time.perf_counter() - started) / 20 < 0.005


@pytest.mark.parametrize("change", [
    lambda r: (r / "README.md").write_text("hello again\n"),           # tracked edit
    lambda r: (r / "src" / "new.py").write_text(""),                   # untracked file
    lambda r: (r / "src" / "main.py").unlink(),                        # deletion
    lambda r: (r / "src" / "main.py").chmod(0o755),                    # mode
    lambda r: (r / "docs").mkdir(),                                    # empty directory
    lambda r: os.symlink("README.md", r / "link"),                     # a symlink
    lambda r: git(r, "commit", "-q", "--allow-empty", "-m", "two"),    # a commit
    lambda r: git(r, "checkout", "-q", "-b", "other"),                 # another branch
])
def test_any_change_changes_the_key(repo: Path, change: object) -> None:
    before = fingerprint(repo)
    assert callable(change)
    change(repo)
    assert fingerprint(repo) != before


def test_an_edit_that_keeps_size_and_mtime_still_changes_the_key(repo: Path) -> None:
    target = repo / "README.md"
    before_stat, before = target.stat(), fingerprint(repo)
    target.write_text("HELLO\n")
    os.utime(target, ns=(before_stat.st_atime_ns, before_stat.st_mtime_ns))
    assert fingerprint(repo) != before  # ctime cannot be set back


def test_staging_changes_the_key(repo: Path) -> None:
    (repo / "README.md").write_text("staged\n")
    before = fingerprint(repo)
    git(repo, "add", "README.md")
    assert fingerprint(repo) != before


def test_packed_refs_are_read(repo: Path) -> None:
    before = fingerprint(repo)
    git(repo, "pack-refs", "--all")
    assert not any((repo / ".git" / "refs" / "heads").iterdir())  # the ref is packed now
    assert fingerprint(repo) == before  # same HEAD, same index, same tree
    git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    assert fingerprint(repo) != before


def test_outside_git_edits_still_change_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    before = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == before
    (tmp_path / "a.txt").write_text("b")
    assert fingerprint(tmp_path) != before


def test_an_unborn_branch_has_a_state(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert fingerprint(tmp_path) == fingerprint(tmp_path)


def test_nothing_planted_in_git_runs(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = f"touch {marker}"
    git(repo, "config", "core.fsmonitor", run)
    git(repo, "config", "filter.x.clean", f"{run}; cat")
    git(repo, "config", "filter.y.process", run)
    git(repo, "config", "core.hooksPath", str(tmp_path))
    (tmp_path / "post-index-change").write_text(f"#!/bin/sh\n{run}\n")
    (tmp_path / "post-index-change").chmod(0o755)
    (repo / ".gitattributes").write_text("*.md filter=x\n*.py filter=y\n")
    os.utime(repo / "README.md", (1, 1))
    fingerprint(repo)
    assert not marker.exists()


# ---- unknown states -----------------------------------------------------------------------


def _gitfile(repo: Path) -> None:
    (repo / ".git").rename(repo / ".real")
    (repo / ".git").write_text("gitdir: .real\n")


def _git_symlink(repo: Path) -> None:
    (repo / ".git").rename(repo / ".real")
    os.symlink(".real", repo / ".git")


def _head_symlink(repo: Path) -> None:
    (repo / ".git" / "HEAD").unlink()
    os.symlink("/etc/hostname", repo / ".git" / "HEAD")


def _index_fifo(repo: Path) -> None:
    (repo / ".git" / "index").unlink()
    os.mkfifo(repo / ".git" / "index")


def _refs_symlink(repo: Path) -> None:
    refs = repo / ".git" / "refs" / "heads"
    refs.rename(repo / ".git" / "elsewhere")
    os.symlink("/etc", refs)


def _escaping_ref(repo: Path) -> None:
    (repo / ".git" / "HEAD").write_text("ref: refs/../../../etc/passwd\n")


def _garbage_head(repo: Path) -> None:
    (repo / ".git" / "HEAD").write_text("not a ref\n")


def _huge_head(repo: Path) -> None:
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/" + "x" * 10_000 + "\n")


def _dir_fifo(repo: Path) -> None:
    os.mkfifo(repo / "src" / "pipe")  # a FIFO in the tree is only stat'ed: not unknown


@pytest.mark.parametrize("odd", [_gitfile, _git_symlink, _head_symlink, _index_fifo,
                                 _refs_symlink, _escaping_ref, _garbage_head, _huge_head])
def test_odd_git_metadata_is_unknown(repo: Path, odd: object) -> None:
    assert callable(odd)
    odd(repo)
    with pytest.raises(StateUnknown):
        fingerprint(repo)
    assert cache.project_state(repo) is None


def test_a_fifo_in_the_tree_is_only_stated(repo: Path) -> None:
    _dir_fifo(repo)
    assert fingerprint(repo) == fingerprint(repo)


def test_symlinks_in_the_tree_are_not_followed(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo / "escape")
    before = fingerprint(repo)
    (outside / "secret").write_text("changed outside")
    assert fingerprint(repo) == before


def test_too_many_entries_is_unknown(repo: Path) -> None:
    for n in range(20):
        (repo / f"f{n}").write_text("")
    with pytest.raises(StateUnknown, match="entries"):
        fingerprint(repo, Limits(max_entries=10))


def test_too_slow_is_unknown(repo: Path) -> None:
    with pytest.raises(StateUnknown, match="longer"):
        fingerprint(repo, Limits(max_seconds=-1))


def test_too_deep_is_unknown(tmp_path: Path) -> None:
    deep = tmp_path
    for _ in range(200):
        deep = deep / "d"
    deep.mkdir(parents=True)
    with pytest.raises(StateUnknown, match="deeper"):
        fingerprint(tmp_path)


def test_a_missing_directory_is_unknown(tmp_path: Path) -> None:
    assert cache.project_state(tmp_path / "gone") is None


def test_no_descriptor_is_left_open(repo: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    fingerprint(repo)
    _index_fifo(repo)
    with pytest.raises(StateUnknown):
        fingerprint(repo)
    assert len(os.listdir("/proc/self/fd")) == before


def test_two_files_naming_the_same_relative_directory_do_not_share_cache_keys(
    tmp_path: Path,
) -> None:
    from orchestrator.config import CONFIG_DIR, Agent
    from orchestrator.models import RunRequest

    request = RunRequest(agent="x", task="t")
    one, two = (Agent.model_validate({"directory": "./proj"},
                                     context={CONFIG_DIR: str(tmp_path / repo)})
                for repo in ("a", "b"))
    assert one.path != two.path
    assert cache.cache_key(request, one, "img", "state") != cache.cache_key(
        request, two, "img", "state")
