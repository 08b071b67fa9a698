"""Attack tests (issue 7): each one performs an escape for real and shows it fail.

Real engine, real pinned claude in the agent container, the stub model. The agent is the
adversary: it acts only through ``ad-sandbox run`` tasks whose stub directives
(``[[bash: CMD]]``) make the real claude run commands inside its container.

Engine fixtures come from the docker suite, so nothing here skips: a missing engine or
image fails every test with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.docker.conftest import agent_image, docker_client

__all__ = ["agent_image", "docker_client"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A throwaway config + state dir (see ``tests.docker.support.write_config``)."""
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "README.md").write_text("# the project\n")
    return folder


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    try:
        yield engine
    finally:
        engine.close()
