"""Issue 7, item 6: from inside a run only the gateway answers.

Attacks, each performed for real by the real claude in an agent container:
- a host service bound to 0.0.0.0 (one on a free port, one on a port inside the gateways'
  port range) tried at the agents network's gateway address and at the default bridge's;
- a listener in another agent's container tried at that container's address.
The run itself must complete, which proves the gateway port still answers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.errors import SandboxError
from orchestrator.runtime import images
from orchestrator.runtime.docker_runtime import DockerRuntime
from orchestrator.runtime.firewall import GATEWAY_PORTS, NETWORK_OPTIONS
from tests.docker.support import (
    AD_SANDBOX,
    agent_containers,
    cli_env,
    run_json,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SECRET = "HOST-SERVICE-SECRET"


class HostListener:
    """A TCP server on 0.0.0.0 in the test process that counts who got through."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with contextlib.suppress(OSError):
                conn.sendall(f"{SECRET}\n".encode())
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _listener_in_range() -> HostListener:
    for port in reversed(GATEWAY_PORTS):
        with contextlib.suppress(OSError):
            return HostListener(port)
    raise AssertionError("no free port in the gateway range")


@pytest.fixture
def listeners() -> Iterator[list[HostListener]]:
    made = [HostListener(), _listener_in_range()]
    yield made
    for listener in made:
        listener.close()


def _probe(target: str, port: int | str) -> str:
    """Bash that prints ``OPEN <target>`` and what the service said, or ``SHUT <target>``."""
    return (f"if out=$(timeout 4 bash -c 'exec 3<>/dev/tcp/{target}/{port} && "
            f"timeout 2 head -n1 <&3' 2>&1); then echo OPEN {target}:{port} $out; "
            f"else echo SHUT {target}:{port}; fi")


def _default_bridge_address(client: docker.DockerClient) -> str:
    """docker0's address: the IPAM gateway, else (engines that omit it) the subnet's first host."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    return str(gateway)


def test_host_services_do_not_answer_a_run(
    home: Path, project: Path, client: docker.DockerClient, listeners: list[HostListener]
) -> None:
    bridge = _default_bridge_address(client)
    agent = f"net{uuid.uuid4().hex[:8]}"
    write_config(home, {agent: {"directory": str(project)}})
    # The agents network's gateway address is the host part of the relay URL it was given.
    gateway = 'gw=${ANTHROPIC_BASE_URL#http://}; export gw=${gw%%:*}; echo GW $gw'
    probes = "; ".join(_probe(target, listener.port)
                       for listener in listeners for target in ("$gw", bridge))
    code, result = run_json(home, agent, f"[[bash: {gateway}; {probes}]]")
    assert code == 0, result  # the gateway answered: the run itself completed
    text = result["result"]
    assert "GW 1" in text, text
    assert SECRET not in text and "OPEN" not in text, text
    assert text.count("SHUT") == 4, text
    assert all(not listener.peers for listener in listeners), [x.peers for x in listeners]


def test_a_run_cannot_reach_another_agents_container(
    home: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    suffix = uuid.uuid4().hex[:8]
    server_agent, client_agent = f"srv{suffix}", f"cli{suffix}"
    dirs = {name: tmp_path / name for name in (server_agent, client_agent)}
    for folder in dirs.values():
        folder.mkdir()
    write_config(home, {name: {"directory": str(folder)} for name, folder in dirs.items()})
    port = 47012
    serve = (f"python3 -c \"import socket,time; s=socket.socket(); s.bind(('0.0.0.0',{port}));"
             f" s.listen(4); s.settimeout(40); t=time.time()\n"
             f"try:\n c,_=s.accept(); c.sendall(b'{SECRET}'); print('GOT-CONNECTION')\n"
             f"except OSError: print('NOBODY-CAME')\" ")
    first = subprocess.Popen(
        [AD_SANDBOX, "run", server_agent, "--json", "--", f"[[bash: {serve}]]"],
        env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        def listening() -> str | None:
            for container in agent_containers(client, server_agent):
                try:
                    container.reload()
                    top = container.top().get("Processes") or []
                except docker.errors.APIError:  # not running (yet, or any more)
                    continue
                if any("socket" in " ".join(row) for row in top):
                    networks = container.attrs["NetworkSettings"]["Networks"]
                    return next(iter(networks.values()))["IPAddress"]  # type: ignore[no-any-return]
            return None

        address = wait_for(listening, 90, "the first agent's listener")
        code, result = run_json(home, client_agent, f"[[bash: {_probe(address, port)}]]")
        assert code == 0, result
        assert SECRET not in result["result"] and "OPEN" not in result["result"], result
        assert f"SHUT {address}:{port}" in result["result"], result
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert "NOBODY-CAME" in stdout, (stdout, stderr)


def test_a_network_made_without_isolation_is_recreated_with_it(
    client: docker.DockerClient, agent_image: images.ImageStatus
) -> None:
    """An agents network from an older release: refused while a container uses it, then
    recreated with the isolation options and the same subnet."""
    suffix = uuid.uuid4().hex[:8]
    name = f"ads-nettest-{suffix}"
    options = {**NETWORK_OPTIONS, "com.docker.network.bridge.name": f"adst{suffix}"}
    old = client.networks.create(name, driver="bridge", internal=True,
                                 labels={"ad-sandbox.test": suffix})
    blocker = None
    try:
        old.reload()
        subnet = old.attrs["IPAM"]["Config"][0]["Subnet"]
        blocker = client.containers.run(agent_image.ref, "60", entrypoint="sleep", detach=True,
                                        network=name, name=f"ads-nettest-blocker-{suffix}")
        runtime = DockerRuntime()
        with pytest.raises(SandboxError, match="still use it") as refused:
            runtime.ensure_network(name, internal=True, labels={}, options=options)
        assert "enable_icc=false" in refused.value.message
        blocker.remove(force=True)
        blocker = None
        info = runtime.ensure_network(name, internal=True, labels={}, options=options)
        attrs = client.networks.get(name).attrs
        assert {k: attrs["Options"].get(k) for k in options} == options
        assert attrs["IPAM"]["Config"][0]["Subnet"] == subnet
        assert info.internal and info.gateway_ip
        again = runtime.ensure_network(name, internal=True, labels={}, options=options)
        assert again == info and client.networks.get(name).id == attrs["Id"]
    finally:
        if blocker is not None:
            blocker.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(name).remove()
