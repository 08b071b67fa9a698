"""Issue 12's dind variant: `compose/compose.dind.yaml` runs the orchestrator against its own
Docker engine (Debian's docker.io in the `engine` service), with no host Docker socket in any
container. The agent image is loaded into that engine from the host's; a real MCP client over
HTTP with the bearer token lists the agents and dispatches a task that runs in a container of
the inner engine (stub model); `down -v` leaves nothing of the project behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from orchestrator.run.sandbox import LABEL_CONFIG, LABEL_MANAGED, config_identity
from orchestrator.runtime.engine_image import build_engine
from orchestrator.runtime.images import AGENT_LATEST, agent_ref, image_status
from orchestrator.runtime.orchestrator_image import build_orchestrator
from tests.e2e.test_compose import (
    PROJECT_LABEL,
    TOKEN,
    call_tools,
    free_port,
    wait_until_serving,
)

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "compose.dind.yaml"
UP_DEADLINE = 90.0
LOAD_DEADLINE = 120.0
SOCKET = "/var/run/docker.sock"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The dind project up with the agent image loaded into its engine; always taken down
    with -v."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (scripts/bootstrap.sh installs it)")
    if image_status(agent_ref()) is None:
        pytest.fail("the agent image is missing: `ad-sandbox image build`")
    build_orchestrator(progress=lambda line: None)
    build_engine(progress=lambda line: None)
    projects = tmp_path / "projects"
    (projects / "alpha").mkdir(parents=True)
    (projects / "alpha" / "CLAUDE.md").write_text("# alpha\nThe alpha project.\n")
    config_path = tmp_path / "agents.yaml"
    config_path.write_text(json.dumps({
        "settings": {"model_api": {"upstream": "stub", "credential": None},
                     "pool": {"warm_per_agent": 0}, "default_timeout": 90},
        "agents": {"alpha": {"directory": str(projects / "alpha"),
                             "description": "alpha agent"}},
    }))
    token_file = tmp_path / "mcp-token"
    token_file.write_text(TOKEN + "\n")
    project = f"adsdind{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {**os.environ, "AD_SANDBOX_CONFIG": str(config_path),
           "AD_SANDBOX_PROJECTS": str(projects), "AD_SANDBOX_TOKEN_FILE": str(token_file),
           "AD_SANDBOX_BIND": "127.0.0.1", "AD_SANDBOX_PORT": str(port)}
    compose = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]
    engine = docker.from_env()
    try:
        subprocess.run([*compose, "up", "-d"], env=env, check=True, capture_output=True,
                       text=True, timeout=UP_DEADLINE)
        found = {c.labels["com.docker.compose.service"]: c for c in
                 engine.containers.list(filters={"label": f"{PROJECT_LABEL}={project}"})}
        assert sorted(found) == ["engine", "orchestrator"], found
        load_agent_image(compose, env)
        yield {"url": f"http://127.0.0.1:{port}/mcp", "project": project,
               "config": config_path, "containers": found, "compose": compose, "env": env}
    except BaseException:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail=40"], env=env,
                              capture_output=True, text=True, check=False)
        print(logs.stdout[-6000:])
        raise
    finally:
        down = subprocess.run([*compose, "down", "-v", "--timeout", "20"], env=env,
                              capture_output=True, text=True, check=False, timeout=90)
        try:
            assert down.returncode == 0, down.stderr
            label = {"label": f"{PROJECT_LABEL}={project}"}
            assert engine.containers.list(all=True, filters=label) == []
            assert engine.networks.list(filters=label) == []
            assert engine.volumes.list(filters=label) == []
            assert [n for n in engine.networks.list() if n.name.startswith(project)] == []
            assert [v for v in engine.volumes.list() if v.name.startswith(project)] == []
            # Nothing of the runs ever reached the host's engine.
            mine = {"label": [f"{LABEL_MANAGED}=1",
                              f"{LABEL_CONFIG}={config_identity(config_path)}"]}
            assert engine.containers.list(all=True, filters=mine) == []
            assert engine.volumes.list(filters=mine) == []
        finally:
            engine.close()


def load_agent_image(compose: list[str], env: dict[str, str]) -> None:
    """`docker save` on the host piped into `docker load` in the engine service: the inner
    engine has no registry either. Both tags (the configured image is `:latest`)."""
    with subprocess.Popen(["docker", "save", agent_ref(), AGENT_LATEST],
                          stdout=subprocess.PIPE) as save:
        load = subprocess.run([*compose, "exec", "-T", "engine", "docker", "load"], env=env,
                              stdin=save.stdout, capture_output=True, text=True, check=False,
                              timeout=LOAD_DEADLINE)
    assert save.returncode == 0 and load.returncode == 0, load.stderr
    assert AGENT_LATEST in load.stdout, load.stdout


def test_compose_dind_over_http(stack: dict[str, Any]) -> None:
    started = time.monotonic()
    denied = wait_until_serving(stack["url"])
    assert denied.status_code == 401

    agents, done = anyio.run(call_tools, stack["url"])
    assert [a["name"] for a in agents["agents"]] == ["alpha"]
    assert done["success"] and done["exit_reason"] == "completed", done
    assert done["result"] == "from the compose stack"
    print(f"list_agents + dispatch took {time.monotonic() - started:.1f}s")

    # No container of the project holds the host's Docker socket; the orchestrator is not
    # privileged and shares the engine's network namespace.
    for container in stack["containers"].values():
        container.reload()
        sources = [m.get("Source") for m in container.attrs["Mounts"]]
        assert SOCKET not in sources, container.name
        assert not container.attrs["HostConfig"]["Privileged"]
    orchestrator = stack["containers"]["orchestrator"].attrs["HostConfig"]
    assert orchestrator["NetworkMode"] == f"container:{stack['containers']['engine'].id}"
    assert {c.removeprefix("CAP_") for c in orchestrator["CapAdd"] or []} == {"NET_ADMIN",
                                                                              "NET_RAW"}

    # The run's container belongs to the inner engine, not the host's.
    engine = docker.from_env()
    try:
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(done["container_id"])
    finally:
        engine.close()
    # The host rules went into the engine's namespace: only the relay ports answer the agents.
    rules = subprocess.run([*stack["compose"], "exec", "-T", "engine", "iptables", "-S",
                            "AD-SANDBOX-INPUT"], env=stack["env"], capture_output=True,
                           text=True, check=True).stdout
    assert "--dport 47300:47399" in rules and "-j REJECT" in rules, rules

