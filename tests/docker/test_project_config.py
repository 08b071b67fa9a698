"""A repository's own ``ad-sandbox.yaml`` (issue 12): found from the current directory with
no ``$AD_SANDBOX_CONFIG``, its relative ``directory:`` read relative to the file."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from orchestrator.paths import CONFIG_ENV
from orchestrator.run.sandbox import LABEL_CONFIG, config_identity
from tests.docker.support import AD_SANDBOX

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "proj").mkdir()
    (root / "proj" / "README.md").write_text("# carried by the repository\n")
    settings = {"model_api": {"upstream": "stub", "credential": None},
                "pool": {"warm_per_agent": 0}, "default_timeout": 120}
    data = {"settings": settings, "agents": {"proj": {"directory": "./proj"}}}
    (root / "ad-sandbox.yaml").write_text(yaml.safe_dump(data))
    return root


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(autouse=True)
def no_leftovers(client: docker.DockerClient, repo: Path) -> Iterator[None]:
    yield
    scope = {"label": f"{LABEL_CONFIG}={config_identity(repo / 'ad-sandbox.yaml')}"}
    leftovers = client.containers.list(all=True, filters=scope)
    for container in leftovers:
        container.remove(force=True)
    for volume in client.volumes.list(filters=scope):
        volume.remove(force=True)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


def test_run_from_a_repository_with_its_own_agents_file(repo: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    # A user file that must lose to the project's file; state kept out of the real home.
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), AD_SANDBOX_STATE_DIR=str(tmp_path / "st"))
    (tmp_path / "xdg" / "ad-sandbox").mkdir(parents=True)
    (tmp_path / "xdg" / "ad-sandbox" / "agents.yaml").write_text("agents: {}\n")
    done = subprocess.run(
        [AD_SANDBOX, "run", "proj", "--json", "--", "[[bash: ls -A /workspace]]"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL, check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["result"].removeprefix("tool result: ").split() == ["README.md"]
