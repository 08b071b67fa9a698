"""Mount redirection: an agent whose project holds another agent's directory swaps it.

Agent ``outer``'s project contains agent ``inner``'s directory. A run of ``outer`` replaces
that directory with a symlink to a host directory holding a canary (then with another real
directory); ``inner``'s next run must be refused with exit 2 and a clear message, and must
neither see nor modify the canary.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.run.sandbox import LABEL_AGENT, LABEL_MANAGED
from tests.docker.support import run_cli, run_json, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AGENT_UID = 4321


@pytest.fixture
def names(client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """Unique agent names (engine objects are named after them); their objects removed after."""
    tag = uuid.uuid4().hex[:8]
    pair = (f"outer-{tag}", f"inner-{tag}")
    yield pair
    for name in pair:
        label = {"label": [f"{LABEL_MANAGED}=1", f"{LABEL_AGENT}={name}"]}
        for container in client.containers.list(all=True, filters=label):
            container.remove(force=True)
        for volume in client.volumes.list(filters=label):
            volume.remove(force=True)


def test_a_swapped_agent_directory_is_refused(
    home: Path, tmp_path: Path, names: tuple[str, str]
) -> None:
    outer_name, inner_name = names
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    (inner / "README.md").write_text("# inner\n")
    for path in (outer, inner, inner / "README.md"):
        os.chown(path, AGENT_UID, AGENT_UID)  # the agents run as the projects' owner
    target = tmp_path / "hostdir"
    target.mkdir()
    target.chmod(0o777)  # writable by whatever uid a redirected run would get
    canary = f"CANARY-{uuid.uuid4().hex}"
    (target / "canary.txt").write_text(canary + "\n")
    write_config(home, {})

    assert run_cli(home, "add", outer_name, str(outer)).returncode == 0
    added = run_cli(home, "add", inner_name, str(inner))
    assert added.returncode == 0, added.stderr
    assert "warning:" in added.stderr and "lies inside" in added.stderr, added.stderr

    # The outer agent swaps the inner agent's directory for a symlink to a host directory.
    code, swap = run_json(home, outer_name, f"[[bash: mv /workspace/inner /workspace/kept && "
                                            f"ln -s {target} /workspace/inner && echo SWAPPED]]")
    assert code == 0 and "SWAPPED" in swap["result"], swap
    assert inner.is_symlink()

    attack = "[[bash: cat /workspace/canary.txt; echo PWNED > /workspace/pwned]]"
    done = run_cli(home, "run", inner_name, "--json", "--", attack)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert canary not in done.stdout + done.stderr
    assert not (target / "pwned").exists()
    said = done.stdout + done.stderr  # the run is refused before it starts
    assert f"agent {inner_name!r}" in said and "became a symlink" in said, said
    assert f"ad-sandbox update {inner_name} --directory" in said

    # Another real directory in its place (a different inode) is refused too.
    code, swap = run_json(home, outer_name, "[[bash: rm /workspace/inner && mkdir "
                                            "/workspace/inner && echo REPLACED]]")
    assert code == 0 and "REPLACED" in swap["result"], swap
    done = run_cli(home, "run", inner_name, "--json", "--", "[[bash: echo > /workspace/x]]")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "replaced by another directory" in done.stdout + done.stderr, done
    assert not (inner / "x").exists()

    doctor = run_cli(home, "doctor", "--json")
    assert "replaced by another directory" in doctor.stdout and "lies inside" in doctor.stdout

    # Put back, the directory is the registered one again and runs.
    code, swap = run_json(home, outer_name, "[[bash: rmdir /workspace/inner && mv "
                                            "/workspace/kept /workspace/inner && echo BACK]]")
    assert code == 0 and "BACK" in swap["result"], swap
    code, result = run_json(home, inner_name, "[[bash: cat /workspace/README.md]]")
    assert code == 0 and "# inner" in result["result"], result
