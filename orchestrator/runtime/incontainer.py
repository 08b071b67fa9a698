"""An orchestrator that itself runs in a container (``compose/compose.yaml``).

Two things differ from a host process, both done through the engine:

- the relay cannot bind the agents bridge's address (that is the host's), so this
  container joins the agents network and the relay listens on its own address there
  (:func:`join_network`);
- the host firewall cannot be set from inside a network namespace, so the rules are run by
  a short-lived helper container on the host's network with ``NET_ADMIN``, using the host's
  own ``iptables`` (chrooted into the host's root, so the host's iptables backend is used)
  (:class:`HostToolRunner`). The Docker socket already makes this process root-equivalent
  on the host; the helper adds no power it did not have.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docker.errors import DockerException, NotFound

from orchestrator.errors import SandboxError
from orchestrator.runtime.engine import connect
from orchestrator.runtime.firewall import Completed

log = logging.getLogger(__name__)

HELPER_LIFETIME_S = 300
"""A helper container exits by itself this long after it started (and is removed)."""
HELPER_REUSE_S = 240.0
"""A helper older than this is replaced rather than exec'd into (it may be about to exit)."""
HELPER_LABEL = "ad-sandbox.netguard-for"


def own_container_id() -> str:
    """This process's container, as the engine knows it (by its hostname, Docker's default
    being the short container id; else by the cgroup path)."""
    candidates = [socket.gethostname(), *_cgroup_ids()]
    client = connect()
    try:
        for candidate in candidates:
            try:
                return str(client.containers.get(candidate).id)
            except NotFound:
                continue
            except DockerException as exc:
                raise SandboxError(f"could not look up this container: {exc}") from exc
    finally:
        client.close()
    raise SandboxError(
        "AD_SANDBOX_GATEWAY_HOST=auto, but this process's container is unknown to the engine",
        hint="Run the orchestrator in a container of the engine whose socket it has, without "
        "a custom hostname (see compose/README.md).",
        tried=candidates,
    )


def _cgroup_ids() -> list[str]:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        tail = line.rsplit("/", 1)[-1].removeprefix("docker-").removesuffix(".scope")
        if len(tail) == 64 and all(c in "0123456789abcdef" for c in tail):
            found.append(tail)
    return found


def join_network(container_id: str, network: str) -> str:
    """Attach ``container_id`` to ``network`` (once) and return its IPv4 address there."""
    client = connect()
    try:
        attrs = _networks(client, container_id)
        if network not in attrs:
            client.networks.get(network).connect(container_id)
            attrs = _networks(client, container_id)
        address = str((attrs.get(network) or {}).get("IPAddress") or "")
    except DockerException as exc:
        raise SandboxError(f"could not attach this container to {network}: {exc}",
                           network=network) from exc
    finally:
        client.close()
    if not address:
        raise SandboxError(f"this container has no IPv4 address on {network}", network=network)
    return address


def _networks(client: Any, container_id: str) -> dict[str, Any]:
    attrs = client.api.inspect_container(container_id)
    return dict((attrs.get("NetworkSettings") or {}).get("Networks") or {})


class HostToolRunner:
    """A firewall ``Runner`` whose commands run on the host, through a helper container.

    The helper (this container's own image, host network, ``NET_ADMIN``/``NET_RAW``, the
    host's root at ``/host``) sleeps a few minutes and removes itself; commands are exec'd
    into it and chrooted into the host's root. Thread-safe.
    """

    def __init__(self, image: str, owner: str) -> None:
        self.image = image
        self.owner = owner
        self._lock = threading.Lock()
        self._helper: str | None = None
        self._started = 0.0

    def __call__(self, argv: Sequence[str], stdin: str | None) -> Completed:
        try:
            with self._lock:
                helper = self._ensure_helper()
                return self._exec(helper, argv, stdin)
        except (DockerException, SandboxError) as exc:
            return Completed(125, "", f"helper container: {exc}")

    def _ensure_helper(self) -> str:
        if self._helper is not None and time.monotonic() - self._started < HELPER_REUSE_S:
            return self._helper
        client = connect()
        try:
            container = client.containers.run(
                self.image, ["sleep", str(HELPER_LIFETIME_S)], entrypoint=[], detach=True,
                auto_remove=True, network_mode="host", cap_drop=["ALL"],
                cap_add=["NET_ADMIN", "NET_RAW", "SYS_CHROOT"],
                volumes={"/": {"bind": "/host", "mode": "rw"}},
                labels={"ad-sandbox.managed": "1", HELPER_LABEL: self.owner[:12]},
                name=f"ad-sandbox-netguard-{self.owner[:12]}-{int(time.time())}",
            )
        finally:
            client.close()
        self._helper, self._started = str(container.id), time.monotonic()
        return self._helper

    def _exec(self, helper: str, argv: Sequence[str], stdin: str | None) -> Completed:
        # The rules text goes in through the environment: exec_run takes no stdin.
        script = 'printf "%s" "$AD_SANDBOX_STDIN" | "$@"' if stdin is not None else '"$@"'
        client = connect()
        try:
            done = client.api.exec_create(
                helper, ["chroot", "/host", "/bin/sh", "-c", script, "sh", *argv],
                environment={"AD_SANDBOX_STDIN": stdin or ""}, stdout=True, stderr=True)
            output = client.api.exec_start(done["Id"], demux=True)
            code = client.api.exec_inspect(done["Id"]).get("ExitCode")
        except NotFound:
            self._helper = None  # it exited: the next call starts another
            raise
        finally:
            client.close()
        out, err = output if isinstance(output, tuple) else (output, b"")
        return Completed(int(code if code is not None else 125),
                         (out or b"").decode(errors="replace"),
                         (err or b"").decode(errors="replace"))


def own_image(container_id: str) -> str:
    """The image id this container runs (the helper runs the same one)."""
    client = connect()
    try:
        return str(client.api.inspect_container(container_id)["Image"])
    except DockerException as exc:
        raise SandboxError(f"could not inspect this container: {exc}") from exc
    finally:
        client.close()
