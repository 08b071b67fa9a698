"""Connecting to the Docker engine; the one place that turns "no engine" into our error."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import docker
from docker.errors import DockerException

from orchestrator.errors import DockerUnavailable


@lru_cache(maxsize=1)
def connect() -> docker.DockerClient:
    """A client for the local engine (``DOCKER_HOST`` honoured), checked with a ping.

    Raises :class:`DockerUnavailable` when the engine does not answer.
    """
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except DockerException as exc:
        raise DockerUnavailable(
            f"Docker engine not reachable ({_short(exc)})",
            hint="Start it (as root: `dockerd &`, or `make docker`) and check `docker info`.",
        ) from exc
    return client


def engine_version() -> str:
    """The engine's server version, e.g. ``20.10.24``."""
    return str(connect().version().get("Version", "unknown"))


def security_options() -> list[str]:
    """The engine's ``SecurityOptions`` (``docker info``): ``name=userns``, ``name=rootless``..."""
    try:
        info = connect().info()
    except DockerException as exc:
        raise DockerUnavailable(f"Docker engine did not answer `info` ({_short(exc)})") from exc
    return [str(option) for option in info.get("SecurityOptions") or []]


def engine_runtimes() -> dict[str, Any]:
    """The runtimes the engine knows (``docker info`` → ``Runtimes``): name → its settings."""
    try:
        info = connect().info()
    except DockerException as exc:
        raise DockerUnavailable(f"Docker engine did not answer `info` ({_short(exc)})") from exc
    return dict(info.get("Runtimes") or {})


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
