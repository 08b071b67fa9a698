"""Docker tests share one guarantee: the engine answers and the images are built.

Nothing here skips. With the engine down or a failed build every docker test FAILS with
the reason, so a broken machine can never pass the suite.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import docker
import pytest

from orchestrator.errors import AdSandboxError
from orchestrator.runtime import engine, images


def _progress(line: str) -> None:
    sys.stderr.write(f"[image build] {line}\n")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine's client; a failure (not a skip) when the engine does not answer."""
    try:
        client = engine.connect()
    except AdSandboxError as exc:
        pytest.fail(f"Docker engine unavailable: {exc.one_line()}", pytrace=False)
    yield client


@pytest.fixture(scope="session", autouse=True)
def agent_image(docker_client: docker.DockerClient) -> images.ImageStatus:
    """``ad-sandbox/agent:<pinned version>``, built first when missing (the base from
    Debian packages when ``debian:bookworm-slim`` cannot be pulled)."""
    try:
        images.ensure_images(offline_base=None, progress=_progress)
        status = images.image_status(images.agent_ref())
    except AdSandboxError as exc:
        pytest.fail(f"could not build the agent image: {exc.one_line()}", pytrace=False)
    if status is None:
        pytest.fail(f"{images.agent_ref()} is missing after the build", pytrace=False)
    return status
