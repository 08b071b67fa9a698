"""Issue 7, item 4: a run never hands local users a privilege through the project.

The agent is the adversary. With a root-owned project a run used to be root, so it could
plant a setuid-root program on the host; a non-root run can still plant one setuid to its
own uid. Each test makes the real claude in the container try, then looks at the host.
These tests run as root (the default set-up), so ``tmp_path`` projects are root-owned.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import docker
import pytest

from orchestrator.privilege import UNPRIVILEGED_ID
from orchestrator.runtime.base import MANAGED_LABEL, WORKSPACE_VOLUME_LABEL
from orchestrator.runtime.docker_runtime import DockerRuntime
from tests.docker.support import run_cli, run_json, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PLANT = "cp /bin/bash {path} && chmod 6755 {path}; stat -c 'PLANTED %u %a' {path}"
"""Copy a shell and make it setuid + setgid to whoever the run is."""


def _agent(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # agent names become container names


def _lines(result: dict[str, object]) -> list[str]:
    return str(result["result"]).removeprefix("tool result: ").splitlines()


def _assert_not_setid(path: Path) -> None:
    info = path.lstat()
    assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path} {oct(info.st_mode)}"


def test_root_owned_project_never_runs_as_root(home: Path, project: Path) -> None:
    assert project.stat().st_uid == 0
    shared = project / "shared"  # a world-writable corner, so the run can write somewhere
    shared.mkdir()
    shared.chmod(0o777)
    agent = _agent("rootproj")
    write_config(home, {agent: {"directory": str(project)}})
    task = ("id -u; id -g; "
            + PLANT.format(path="/workspace/rootsh") + "; "
            + PLANT.format(path="/workspace/shared/sh"))
    code, result = run_json(home, agent, f"[[bash: {task}]]")
    assert code == 0, result
    lines = _lines(result)
    assert lines[:2] == [str(UNPRIVILEGED_ID), str(UNPRIVILEGED_ID)], lines
    # Not root, so nothing could be planted in the root-owned 0755 directory...
    assert not (project / "rootsh").exists()
    # ...and what it planted where it could write lost its setuid/setgid bits on the host.
    planted = shared / "sh"
    assert f"PLANTED {UNPRIVILEGED_ID} 6755" in lines  # it did set them, inside
    assert planted.stat().st_uid == UNPRIVILEGED_ID
    _assert_not_setid(planted)


def test_setuid_planted_by_a_non_root_run_does_not_survive(
    home: Path, project: Path, tmp_path: Path
) -> None:
    os.chown(project, 4321, 4321)
    victim = tmp_path / "victim"  # a setuid file outside the project the agent links to
    victim.write_bytes(b"#!/bin/sh\n")
    victim.chmod(0o4755)
    agent = _agent("plant")
    write_config(home, {agent: {"directory": str(project)}})
    task = (PLANT.format(path="/workspace/x") + "; mkdir -p /workspace/a/b/c && "
            + PLANT.format(path="/workspace/a/b/c/y")
            + f"; ln -s {victim} /workspace/link; mkdir /workspace/locked && "
            + PLANT.format(path="/workspace/locked/z") + "; chmod 011 /workspace/locked")
    code, result = run_json(home, agent, f"[[bash: {task}]]")
    assert code == 0, result
    assert _lines(result).count("PLANTED 4321 6755") == 3, result
    for planted in (project / "x", project / "a/b/c/y", project / "locked/z"):
        assert planted.stat().st_uid == 4321
        _assert_not_setid(planted)
    assert (project / "link").is_symlink()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o4755  # a symlink was never followed


def test_read_only_project_is_mounted_nosuid_nodev(
    home: Path, project: Path, docker_client: docker.DockerClient
) -> None:
    os.chown(project, 4321, 4321)
    agent = _agent("romount")
    write_config(home, {agent: {"directory": str(project), "mount": "ro"}})
    task = ("awk '$5 == \"/workspace\" {print \"MOUNT\", $6}' /proc/self/mountinfo; "
            "touch /workspace/new 2>/dev/null || echo READ-ONLY; cat /workspace/README.md")
    code, result = run_json(home, agent, f"[[bash: {task}]]")
    assert code == 0, result
    lines = _lines(result)
    mount = next(line for line in lines if line.startswith("MOUNT "))
    options = set(mount.split()[1].split(","))
    assert {"ro", "nosuid", "nodev"} <= options, mount
    assert "READ-ONLY" in lines and "# the project" in lines
    # The volume that mounted it went with the container; the project is intact.
    leftovers = [v for v in docker_client.volumes.list(
        filters={"label": f"{WORKSPACE_VOLUME_LABEL}=1"})
        if (v.attrs.get("Options") or {}).get("device") == str(project)]
    assert leftovers == []
    assert (project / "README.md").read_text() == "# the project\n"


def test_configured_user_is_honoured_and_root_refused(home: Path, project: Path) -> None:
    os.chown(project, 4242, 4343)
    agent = _agent("user")
    write_config(home, {agent: {"directory": str(project), "user": "4242:4343"}})
    code, result = run_json(home, agent, "[[bash: id -u; id -g; echo > /workspace/made]]")
    assert code == 0, result
    assert _lines(result)[:2] == ["4242", "4343"]
    made = (project / "made").stat()
    assert (made.st_uid, made.st_gid) == (4242, 4343)

    for root in ("0", "0:0", "4242:0"):
        write_config(home, {agent: {"directory": str(project), "user": root}})
        done = run_cli(home, "run", agent, "--json", "--", "[[bash: id -u]]")
        assert done.returncode == 2, done
        assert f"agents.{agent}.user" in done.stderr and "root" in done.stderr, done.stderr


def test_dangling_workspace_volumes_are_pruned(docker_client: docker.DockerClient) -> None:
    session = {"ad-sandbox.test-session": uuid.uuid4().hex}
    labels = {MANAGED_LABEL: "1", WORKSPACE_VOLUME_LABEL: "1", **session}
    name = f"adsb-test-ws-{uuid.uuid4().hex[:10]}"
    docker_client.volumes.create(name, labels=labels)
    try:
        removed = DockerRuntime(docker_client).prune_volumes(
            {WORKSPACE_VOLUME_LABEL: "1", **session})
        assert removed == [name]
        assert not docker_client.volumes.list(filters={"name": name})
    finally:
        for volume in docker_client.volumes.list(filters={"name": name}):
            volume.remove(force=True)
