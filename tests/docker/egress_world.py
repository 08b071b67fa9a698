"""An "outside world" for egress tests: small HTTP and HTTPS servers under test host names.

Each server is a container of the base image on a network the test owns, reachable there by
its network alias (``allowed.test``, ``denied.test``, ...), answering every request on port
80 (HTTP) and 443 (HTTPS) with the body ``<name> <scheme>`` (and, in the headers
``X-Seen-Forwarded-For`` and ``X-Seen-Via``, those request headers as they arrived, or "-").
Their certificates come from a throwaway CA made with the host's ``openssl`` for this world
only; a client that should trust them is given :attr:`EgressWorld.ca_pem` (a path) or
:attr:`EgressWorld.ca_text`::

    with EgressWorld(client, "some-network") as world:
        world.address("allowed.test")  # the server's IP on that network
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import docker
from docker.errors import DockerException
from docker.models.containers import Container

from orchestrator.runtime.images import BASE_REF

DEFAULT_NAMES = ("allowed.test", "other.allowed.test", "denied.test")
WORLD_LABELS = {"ad-sandbox.test": "1", "ad-sandbox.test.world": "1"}
READY_TIMEOUT_S = 30

# Runs in the server container: the certificate and key arrive in the environment, so the
# engine needs no bind mount from the test's machine.
SERVER = r"""
import http.server, os, ssl, threading

name = os.environ["WORLD_NAME"]
for var, path in (("WORLD_CERT", "/tmp/cert.pem"), ("WORLD_KEY", "/tmp/key.pem")):
    with open(path, "w") as out:
        out.write(os.environ[var])

def handler(scheme):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{name} {scheme}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            # What the client's side revealed on the way (a proxy should add nothing).
            self.send_header("X-Seen-Forwarded-For", self.headers.get("X-Forwarded-For", "-"))
            self.send_header("X-Seen-Via", self.headers.get("Via", "-"))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, fmt, *args):
            print(scheme, self.client_address[0], fmt % args, flush=True)
    return Handler

plain = http.server.ThreadingHTTPServer(("0.0.0.0", 80), handler("http"))
tls = http.server.ThreadingHTTPServer(("0.0.0.0", 443), handler("https"))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/tmp/cert.pem", "/tmp/key.pem")
tls.socket = context.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
print("world server ready", flush=True)
tls.serve_forever()
"""


class WorldError(AssertionError):
    """The world could not be made; the message carries the step and its output."""


class EgressWorld:
    """HTTP+HTTPS servers with the given aliases on ``network``, and the CA they chain to.

    A context manager: entering starts every server and waits until each listens; leaving
    (or a failed start) removes the containers and the CA's files.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        network: str,
        names: Sequence[str] = DEFAULT_NAMES,
        image: str = BASE_REF,
    ) -> None:
        self.client = client
        self.network = network
        self.names = tuple(names)
        self.image = image
        self._dir = Path(tempfile.mkdtemp(prefix="egress-world-"))
        self.ca_pem = self._dir / "ca.pem"
        self.containers: dict[str, Container] = {}
        self._addresses: dict[str, str] = {}

    @property
    def ca_text(self) -> str:
        return self.ca_pem.read_text()

    def address(self, name: str) -> str:
        """The IP of the server named ``name`` on the world's network."""
        return self._addresses[name]

    def __enter__(self) -> EgressWorld:
        try:
            self._make_ca()
            for name in self.names:
                self.containers[name] = self._start(name)
            for name, container in self.containers.items():
                self._wait_ready(name, container)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for container in self.containers.values():
            with contextlib.suppress(DockerException):  # already gone
                container.remove(force=True)
        self.containers.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- certificates ------------------------------------------------------------------

    def _openssl(self, *args: str) -> None:
        if shutil.which("openssl") is None:
            raise WorldError("the egress world needs the openssl command on the test machine "
                             "(apt-get install -y openssl)")
        done = subprocess.run(["openssl", *args], cwd=self._dir, capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise WorldError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")

    def _make_ca(self) -> None:
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                      "-subj", "/CN=ad-sandbox test world CA", "-keyout", "ca.key",
                      "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for name in self.names:
            self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
                          "-keyout", f"{name}.key", "-out", f"{name}.csr")
            (self._dir / f"{name}.ext").write_text(
                f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
            self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
                          "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                          "-extfile", f"{name}.ext", "-out", f"{name}.pem")

    # --- servers -----------------------------------------------------------------------

    def _start(self, name: str) -> Container:
        endpoint = self.client.api.create_endpoint_config(aliases=[name])
        try:
            container: Container = self.client.containers.run(
                self.image,
                ["python3", "-c", SERVER],
                detach=True,
                name=f"ad-sandbox-test-world-{uuid.uuid4().hex[:8]}",
                labels={**WORLD_LABELS, "ad-sandbox.test.world.name": name},
                environment={
                    "WORLD_NAME": name,
                    "WORLD_CERT": (self._dir / f"{name}.pem").read_text(),
                    "WORLD_KEY": (self._dir / f"{name}.key").read_text(),
                },
                network=self.network,
                networking_config={self.network: endpoint},
            )
        except DockerException as exc:
            raise WorldError(f"could not start the world server {name}: {exc}") from exc
        return container

    def _wait_ready(self, name: str, container: Container) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            container.reload()
            logs = container.logs().decode(errors="replace")
            if "world server ready" in logs:
                networks = container.attrs["NetworkSettings"]["Networks"]
                self._addresses[name] = networks[self.network]["IPAddress"]
                return
            if container.status not in ("created", "running"):
                raise WorldError(f"world server {name} stopped ({container.status}): "
                                 f"{logs.strip()[-800:]}")
            time.sleep(0.1)
        raise WorldError(f"world server {name} not ready after {READY_TIMEOUT_S}s; "
                         f"last output: {container.logs().decode(errors='replace')[-800:]}")
