"""The agent image itself: the pinned claude, small, non-root, and a real `claude -p`
inside it talking to the stub model across an internal Docker network."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

import orchestrator
from orchestrator.runtime import images
from orchestrator.stub import StubServer

pytestmark = pytest.mark.docker

TEST_LABELS = {"ad-sandbox.test": "1"}
MAX_IMAGE_BYTES = 700_000_000  # 700 MB as `docker images` counts them
CLAUDE_DEADLINE_S = 60


def run_in_image(client: docker.DockerClient, *argv: str) -> str:
    """Run ``argv`` in a throwaway container of the agent image; return its stdout."""
    output = client.containers.run(
        images.AGENT_LATEST, list(argv), remove=True, labels=TEST_LABELS, network_mode="none"
    )
    assert isinstance(output, bytes)
    return output.decode()


def test_claude_version_is_the_pinned_one(docker_client: docker.DockerClient) -> None:
    printed = run_in_image(docker_client, "claude", "--version").strip()
    assert printed == f"{orchestrator.CLAUDE_VERSION} (Claude Code)"


def test_image_is_small_labelled_and_non_root(
    docker_client: docker.DockerClient, agent_image: images.ImageStatus
) -> None:
    assert agent_image.size_bytes <= MAX_IMAGE_BYTES, f"{agent_image.size_bytes / 1e6:.0f} MB"
    assert agent_image.claude_version == orchestrator.CLAUDE_VERSION
    assert len(agent_image.labels[images.LABEL_HASH]) == 64
    latest = images.image_status(images.AGENT_LATEST)
    assert latest is not None and latest.id == agent_image.id
    ids = run_in_image(docker_client, "sh", "-c", "id -u; id -un; pwd").split()
    assert ids == ["1000", "agent", "/workspace"]


def test_image_has_the_tools(docker_client: docker.DockerClient) -> None:
    script = "for t in bash git python3 node ps; do command -v $t >/dev/null || echo no-$t; done"
    assert run_in_image(docker_client, "sh", "-c", script + "; echo checked") == "checked\n"


# --- a real claude run inside the container --------------------------------------------


@pytest.fixture(scope="module")
def internal_network(docker_client: docker.DockerClient) -> Iterator[Network]:
    network = docker_client.networks.create(
        f"ad-sandbox-test-{uuid.uuid4().hex[:8]}", driver="bridge", internal=True,
        labels=TEST_LABELS,
    )
    try:
        network.reload()
        yield network
    finally:
        network.remove()


@pytest.fixture(scope="module")
def stub_on_gateway(internal_network: Network) -> Iterator[StubServer]:
    """The stub model bound on the internal network's gateway: the container's only exit."""
    gateway = internal_network.attrs["IPAM"]["Config"][0]["Gateway"]
    with StubServer(host=gateway, port=0) as stub:
        yield stub


@pytest.fixture(scope="module")
def agent_container(
    docker_client: docker.DockerClient, internal_network: Network
) -> Iterator[Container]:
    container = docker_client.containers.run(
        images.AGENT_LATEST, detach=True, init=True, network=internal_network.name,
        labels=TEST_LABELS,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def claude_p(container: Container, stub: StubServer, prompt: str) -> dict[str, Any]:
    """``claude -p`` exec'ed in the container, the prompt on stdin; the parsed JSON result."""
    env = {
        "ANTHROPIC_BASE_URL": stub.url,
        "ANTHROPIC_API_KEY": "sk-test-not-a-real-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    argv = ["docker", "exec", "-i"]
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]
    argv += [
        str(container.id), "claude", "-p", "--output-format", "json",
        "--permission-mode", "bypassPermissions",
    ]
    done = subprocess.run(
        argv, input=prompt, capture_output=True, text=True, timeout=CLAUDE_DEADLINE_S
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr or done.stdout}"
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_claude_in_container_answers_through_internal_network(
    agent_container: Container, stub_on_gateway: StubServer
) -> None:
    result = claude_p(agent_container, stub_on_gateway, "hello")
    assert result["type"] == "result"
    assert result["is_error"] is False
    assert result["result"] == "echo: hello"
    assert stub_on_gateway.received, "the stub saw no request"


def test_bash_tool_runs_inside_the_container(
    agent_container: Container, stub_on_gateway: StubServer
) -> None:
    result = claude_p(agent_container, stub_on_gateway, "[[bash: echo sandbox-$((6*7))]]")
    assert result["is_error"] is False
    assert "sandbox-42" in result["result"]
