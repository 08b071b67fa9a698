"""The pure parts of issue 7 item 4: the run's ids, ``agents.NAME.user``, the engine mounts
and the setid scrub. The attacks themselves run in ``tests/security/test_privilege.py``."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator import privilege
from orchestrator.config import Agent
from orchestrator.configfile import parse_config
from orchestrator.errors import ConfigError
from orchestrator.privilege import UNPRIVILEGED_ID, parse_user, run_ids, strip_setid_bits
from orchestrator.run.reaper import reap
from orchestrator.runtime.base import WORKSPACE_VOLUME_LABEL, ContainerSpec, Mount
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.runtime.mounts import engine_mounts
from orchestrator.state import StateStore

SETID = stat.S_ISUID | stat.S_ISGID


@pytest.mark.parametrize(("value", "ids"), [
    ("1000", (1000, 1000)), ("1000:50", (1000, 50)), (" 7:8 ", (7, 8)),
])  # fmt: skip
def test_parse_user(value: str, ids: tuple[int, int]) -> None:
    assert parse_user(value) == ids


@pytest.mark.parametrize("value", ["0", "0:0", "1000:0", "0:1000", "root", "1000:", "-1",
                                   "1:2:3", "99999999999"])
def test_parse_user_refuses_root_and_junk(value: str) -> None:
    with pytest.raises(ValueError):
        parse_user(value)


def test_run_ids_never_root() -> None:
    assert run_ids(None, 1000, 1000) == (1000, 1000)
    assert run_ids(None, 0, 0) == (UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    assert run_ids(None, 0, 100) == (UNPRIVILEGED_ID, 100)
    assert run_ids(None, 1000, 0) == (1000, UNPRIVILEGED_ID)
    assert run_ids("4242:4343", 0, 0) == (4242, 4343)


def test_agent_user_field() -> None:
    assert Agent(directory="/p").user is None
    assert Agent(directory="/p", user="1000:1000").user == "1000:1000"
    for bad in ("0", "5:0", 1000, "x"):
        with pytest.raises(ValidationError, match="user"):
            Agent.model_validate({"directory": "/p", "user": bad})


def test_unquoted_yaml_user_is_refused_not_misread(tmp_path: Path) -> None:
    # YAML 1.1 reads 1000:50 as 60050 (base 60): it must never become a uid.
    path = tmp_path / "agents.yaml"
    with pytest.raises(ConfigError, match="quote it"):
        parse_config("agents:\n  a:\n    directory: /p\n    user: 1000:50\n", path)
    config = parse_config("agents:\n  a:\n    directory: /p\n    user: '1000:50'\n", path)
    assert config.agents["a"].user == "1000:50"


def _spec(user: str) -> ContainerSpec:
    return ContainerSpec(name="n", image="i", user=user, workdir="/", env={}, labels={},
                         mounts=(), tmpfs={}, network="none", cpus=1, memory_bytes=1,
                         pids_limit=1)


@pytest.mark.parametrize("user", ["0", "0:0", "1000:0", "0:1000"])
def test_a_container_spec_never_runs_as_root(user: str) -> None:
    with pytest.raises(ValueError, match="root"):
        _spec(user)
    assert _spec("1000:1000").user == "1000:1000"


def test_read_only_projects_mount_through_a_nosuid_nodev_volume() -> None:
    ro, rw, vol = engine_mounts((
        Mount("/home/u/p", "/workspace", read_only=True),
        Mount("/home/u/q", "/other", read_only=False),
        Mount("cfg-volume", "/cfg", read_only=False, kind="volume"),
    ))  # fmt: skip
    assert ro["Type"] == "volume" and not ro.get("Source") and ro["Target"] == "/workspace"
    options = ro["VolumeOptions"]
    assert options["NoCopy"] is True
    assert options["Labels"][WORKSPACE_VOLUME_LABEL] == "1"
    assert options["DriverConfig"] == {"Name": "local", "Options": {
        "type": "none", "o": "bind,nosuid,nodev,ro", "device": "/home/u/p"}}
    assert (rw["Type"], rw["Source"], rw["ReadOnly"]) == ("bind", "/home/u/q", False)
    assert (vol["Type"], vol["Source"]) == ("volume", "cfg-volume")


def _setid_file(path: Path, mode: int = 0o6755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_strip_clears_setid_bits_below_the_project(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    planted = [_setid_file(root / "x"), _setid_file(root / "a/b/c/y", 0o2755),
               _setid_file(root / "d/z", 0o4700)]
    plain = _setid_file(root / "plain", 0o755)
    (root / "sgid-dir").mkdir()
    (root / "sgid-dir").chmod(0o2775)  # a setgid directory is left alone
    os.mkfifo(root / "fifo")  # never opened, so never blocks
    report = strip_setid_bits(root)
    assert sorted(report.cleared) == ["a/b/c/y", "d/z", "x"]
    for path in planted:
        assert not path.stat().st_mode & SETID
    assert stat.S_IMODE(planted[0].stat().st_mode) == 0o755
    assert stat.S_IMODE(plain.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "sgid-dir").stat().st_mode) == 0o2775
    assert report.failed == [] and report.closed == []


def test_strip_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = _setid_file(tmp_path / "outside/victim", 0o4755)
    root = tmp_path / "proj"
    root.mkdir()
    (root / "file-link").symlink_to(victim)
    (root / "dir-link").symlink_to(victim.parent)
    report = strip_setid_bits(root)
    assert report.cleared == []
    assert stat.S_IMODE(victim.stat().st_mode) == 0o4755


def test_strip_closes_off_what_is_too_deep(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privilege, "MAX_DEPTH", 2)
    root = tmp_path / "proj"
    deep = _setid_file(root / "a/b/c/d/x")
    (root / "a/b/c").chmod(0o755)
    report = strip_setid_bits(root)
    assert report.closed == ["a/b/c"]
    assert stat.S_IMODE((root / "a/b/c").stat().st_mode) == 0o700  # others cannot reach x
    assert deep.stat().st_mode & SETID  # not scanned, but unreachable for other users


def test_strip_as_the_owner_gets_into_a_directory_it_locked() -> None:
    """The orchestrator as the project's (non-root) owner, and a planted mode-011 directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another uid")
    base = Path(tempfile.mkdtemp(prefix="adsb-priv-"))  # reachable by uid 4321, unlike tmp_path
    base.chmod(0o755)
    root = base / "proj"
    hidden = _setid_file(root / "locked/z")
    for path in (root, root / "locked", hidden):
        os.chown(path, 4321, 4321)
    hidden.chmod(0o6755)  # chown cleared the bits
    (root / "locked").chmod(0o011)
    pid = os.fork()
    if pid == 0:  # the child drops to the owner's ids, as a non-root orchestrator would be
        try:
            os.setgroups([])
            os.setgid(4321)
            os.setuid(4321)
            report = strip_setid_bits(root)
            os._exit(0 if report.cleared == ["locked/z"] else 1)
        except BaseException as exc:
            os.write(2, f"{exc!r}\n".encode())
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert not hidden.stat().st_mode & SETID
    finally:
        shutil.rmtree(base)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_scrub_after_run_skips_read_only_projects(tmp_path: Path, anyio_backend: str) -> None:
    planted = _setid_file(tmp_path / "x")
    await privilege.scrub_after_run("a", tmp_path, mount="ro")
    assert planted.stat().st_mode & SETID
    await privilege.scrub_after_run("a", tmp_path, mount="rw")
    assert not planted.stat().st_mode & SETID


def test_reaper_prunes_dangling_workspace_volumes(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.ensure_volume("ws-dangling", labels={"ad-sandbox.managed": "1",
                                                 WORKSPACE_VOLUME_LABEL: "1"})
    runtime.ensure_volume("config-volume", labels={"ad-sandbox.managed": "1"})
    with StateStore(tmp_path / "state.db") as state:
        reap(runtime, state, scope=None)
    assert set(runtime.volumes) == {"config-volume"}
