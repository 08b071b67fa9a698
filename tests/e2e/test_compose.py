"""Issue 12's compose proof: `docker-compose up` runs the orchestrator image; a real MCP
client over HTTP with the bearer token lists the agents and dispatches a task that runs in an
agent container started by the containerised orchestrator (stub model); without the token,
401; `docker-compose down -v` leaves nothing of the project behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from orchestrator.run.sandbox import LABEL_CONFIG, LABEL_MANAGED, config_identity
from orchestrator.runtime.images import agent_ref, image_status
from orchestrator.runtime.incontainer import HELPER_LABEL
from orchestrator.runtime.orchestrator_image import build_orchestrator

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
TOKEN = "compose-e2e-" + uuid.uuid4().hex
UP_DEADLINE = 60.0
CALL_DEADLINE = 120.0
PROJECT_LABEL = "com.docker.compose.project"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The compose project up, on a free loopback port; always taken down with -v."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (scripts/bootstrap.sh installs it)")
    if image_status(agent_ref()) is None:
        pytest.fail("the agent image is missing: `ad-sandbox image build`")
    build_orchestrator(progress=lambda line: None)
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
    project = f"adstest{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {**os.environ, "AD_SANDBOX_CONFIG": str(config_path),
           "AD_SANDBOX_PROJECTS": str(projects), "AD_SANDBOX_TOKEN_FILE": str(token_file),
           "AD_SANDBOX_BIND": "127.0.0.1", "AD_SANDBOX_PORT": str(port)}
    compose = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]
    engine = docker.from_env()
    orchestrator_id = ""
    try:
        subprocess.run([*compose, "up", "-d"], env=env, check=True, capture_output=True,
                       text=True, timeout=UP_DEADLINE)
        found = engine.containers.list(filters={"label": f"{PROJECT_LABEL}={project}"})
        assert len(found) == 1, found
        orchestrator_id = found[0].id
        yield {"url": f"http://127.0.0.1:{port}/mcp", "project": project,
               "config": config_path, "container": found[0]}
    except BaseException:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail=40"], env=env,
                              capture_output=True, text=True, check=False)
        print(logs.stdout[-4000:])
        raise
    finally:
        down = subprocess.run([*compose, "down", "-v", "--timeout", "20"], env=env,
                              capture_output=True, text=True, check=False, timeout=90)
        _remove_leftovers(engine, config_path, orchestrator_id)
        try:
            assert down.returncode == 0, down.stderr
            label = {"label": f"{PROJECT_LABEL}={project}"}
            assert engine.containers.list(all=True, filters=label) == []
            assert engine.networks.list(filters=label) == []
            assert engine.volumes.list(filters=label) == []
            assert [n for n in engine.networks.list() if n.name.startswith(project)] == []
            assert [v for v in engine.volumes.list() if v.name.startswith(project)] == []
        finally:
            engine.close()


def _remove_leftovers(engine: Any, config_path: Path, orchestrator_id: str) -> None:
    """What the stack made outside the compose project: this config's agent containers (none
    expected after a clean stop), its session volume and the firewall helper (it would exit
    by itself)."""
    filters = [{"label": [f"{LABEL_MANAGED}=1", f"{LABEL_CONFIG}={config_identity(config_path)}"]}]
    if orchestrator_id:
        filters.append({"label": f"{HELPER_LABEL}={orchestrator_id[:12]}"})
    for flt in filters:
        for container in engine.containers.list(all=True, filters=flt):
            container.remove(force=True)
    for volume in engine.volumes.list(filters=filters[0]):  # the agent's session volume
        volume.remove(force=True)


def wait_until_serving(url: str) -> httpx2.Response:
    deadline = time.monotonic() + UP_DEADLINE
    while True:
        try:
            return httpx2.post(url, json={}, timeout=5)
        except httpx2.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


async def call_tools(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with anyio.fail_after(CALL_DEADLINE):
        async with httpx2.AsyncClient(headers=headers, timeout=CALL_DEADLINE) as http, Client(
            streamable_http_client(url, http_client=http)
        ) as client:
            agents = body(await client.call_tool("list_agents", {}))
            done = body(await client.call_tool(
                "dispatch", {"agent": "alpha", "task": "[[reply: from the compose stack]]"}))
    return agents, done


def body(result: Any) -> dict[str, Any]:
    if result.structured_content is not None:
        return dict(result.structured_content)
    return dict(json.loads(result.content[0].text))


def test_compose_stack_over_http(stack: dict[str, Any]) -> None:
    denied = wait_until_serving(stack["url"])
    assert denied.status_code == 401

    agents, done = anyio.run(call_tools, stack["url"])
    assert [a["name"] for a in agents["agents"]] == ["alpha"]
    assert done["success"] and done["exit_reason"] == "completed", done
    assert done["result"] == "from the compose stack"

    # The run's container was made by the containerised orchestrator, on the agents network
    # where the orchestrator serves its relay on its own address.
    stack["container"].reload()
    networks = stack["container"].attrs["NetworkSettings"]["Networks"]
    assert "ad-sandbox-agents" in networks
    engine = docker.from_env()
    try:
        run = engine.containers.get(done["container_id"])
        assert run.labels[LABEL_CONFIG] == config_identity(stack["config"])
        assert "ad-sandbox-agents" in run.attrs["NetworkSettings"]["Networks"]
    except docker.errors.NotFound:
        pass  # already released after the run: the record's id is the proof it existed
    finally:
        engine.close()
