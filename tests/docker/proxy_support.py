"""Driving the egress proxy image in docker tests: start it as the orchestrator does, start
clients behind it, write their policies, read their decisions, and run requests from them.

Used by tests/docker/test_proxy.py with the world of tests/docker/egress_world.py.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import uuid
from typing import Any

import docker
from docker.models.containers import Container
from docker.models.networks import Network

from orchestrator.runtime.images import BASE_REF
from tests.docker.egress_world import EgressWorld
from tests.docker.support import wait_for

TEST_LABELS = {"ad-sandbox.test": "1"}
PROXY_ALIAS = "egress-proxy"
PROXY_PORT = 3128
DECISION = re.compile(r"^\d{9,} (allow|deny) \S+ (http|connect|sni)$")

# Runs in the client containers (python3 of the base image); prints one JSON object.
CLIENT = r"""
import concurrent.futures, json, os, socket, ssl, sys, time, urllib.error, urllib.request

PROXY = os.environ["PROXY"]

def context(verify):
    if verify:
        return ssl.create_default_context(cadata=os.environ["WORLD_CA"])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

def fetch(url):
    proxy = "http://" + PROXY
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy, "ftp": proxy}),
        urllib.request.HTTPSHandler(context=context(True)))
    try:
        with opener.open(url, timeout=10) as reply:
            return {"status": reply.status, "body": reply.read().decode(),
                    "seen": [reply.headers.get("X-Seen-Forwarded-For"),
                             reply.headers.get("X-Seen-Via")]}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except Exception as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}

def many(*urls):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return {"statuses": [r["status"] for r in pool.map(fetch, urls)]}

def read_all(sock):
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError as exc:
        data += f"[{type(exc).__name__}]".encode()
    return data.decode(errors="replace")

def tunnel(target, sni, verify, plaintext="", forwarded_for=""):
    # CONNECT target by hand, then either TLS with this SNI or plaintext, over the tunnel.
    host, port = PROXY.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and (chunk := sock.recv(1)):
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if not status.startswith("HTTP/1.1 200"):
        return {"connect": status}
    if plaintext:
        sock.sendall(plaintext.encode().decode("unicode_escape").encode())
        return {"connect": status, "reply": read_all(sock)}
    try:
        tls = context(verify == "verify").wrap_socket(sock, server_hostname=sni)
    except (ssl.SSLError, OSError) as exc:
        return {"connect": status, "handshake": f"{type(exc).__name__}: {exc}"}
    tls.sendall(f"GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n".encode())
    return {"connect": status, "handshake": "ok", "reply": read_all(tls)}

def direct(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return {"direct": "connected"}
    except OSError as exc:
        return {"direct": f"{type(exc).__name__}: {exc}"}

def resolve(name):
    try:
        return {"addresses": sorted({a[4][0] for a in socket.getaddrinfo(name, 443)})}
    except OSError as exc:
        return {"addresses": [], "error": f"{type(exc).__name__}: {exc}"}

def bypass(*targets):
    # Each "host:port" connected to directly, each bare name resolved; all at once.
    def one(target):
        if ":" in target:
            return direct(*target.rsplit(":", 1))["direct"]
        return resolve(target)["addresses"]
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        return dict(zip(targets, pool.map(one, targets)))

command, args = sys.argv[1], sys.argv[2:]
started = time.monotonic()
result = globals()[command](*args)
result["elapsed"] = time.monotonic() - started
print(json.dumps(result))
"""


# A DNS server that logs each name asked and answers that it does not exist.
DNS_LOGGER = r"""
import socket

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 53))
print("dns ready", flush=True)
while True:
    query, peer = sock.recvfrom(512)
    labels, at = [], 12
    while at < len(query) and query[at]:
        labels.append(query[at + 1:at + 1 + query[at]].decode(errors="replace"))
        at += 1 + query[at]
    print("query", ".".join(labels).lower(), flush=True)
    question = query[12:at + 5]
    sock.sendto(query[:2] + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question, peer)
"""




def gateway(network: Network) -> str:
    return str(network.attrs["IPAM"]["Config"][0]["Gateway"])


def start_proxy(client: docker.DockerClient, ref: str, internal: Network, egress: Network,
                alias: str = PROXY_ALIAS, dns: list[str] | None = None) -> Container:
    """The proxy as the orchestrator runs it; returned once its entry point says ready."""
    container = client.containers.create(
        ref,
        name=f"ad-sandbox-test-proxy-{uuid.uuid4().hex[:8]}",
        labels=TEST_LABELS,
        user="13:13",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        tmpfs={"/run/ad-sandbox": "uid=13,gid=13,mode=0750,size=16m"},
        environment={
            # The host's address on the egress network, as the orchestrator passes it.
            "AD_SANDBOX_PROXY_DENY": f"{gateway(egress)}/32",
            # Port 80 lets a test show that a non-TLS stream in a tunnel is refused.
            "AD_SANDBOX_PROXY_CONNECT_PORTS": "80",
        },
        network=str(egress.name),
        dns=dns,
    )
    try:
        internal.connect(container, aliases=[alias])
        container.start()
        wait_for(lambda: listening(container), 30, "the proxy to be ready")
    except BaseException:
        container.remove(force=True)
        raise
    return container


def listening(container: Container) -> bool:
    container.reload()
    if container.status != "running":
        logs = container.logs().decode(errors="replace")
        raise AssertionError(f"the proxy stopped ({container.status}): {logs[-1500:]}")
    return b"ad-sandbox-proxy: ready" in container.logs()


def start_client(client: docker.DockerClient, network: Network, world: EgressWorld) -> Container:
    container = client.containers.run(
        BASE_REF, ["sleep", "infinity"], detach=True, init=True,
        name=f"ad-sandbox-test-client-{uuid.uuid4().hex[:8]}", labels=TEST_LABELS,
        network=str(network.name), user="1000:1000", read_only=True, cap_drop=["ALL"],
        environment={"PROXY": f"{PROXY_ALIAS}:{PROXY_PORT}", "WORLD_CA": world.ca_text})
    container.reload()
    return container



def ip_of(container: Container) -> str:
    networks = container.attrs["NetworkSettings"]["Networks"]
    (only,) = networks.values()
    return str(only["IPAddress"])


# --- what a test does: policy in, requests, decisions out --------------------------------


def set_policy(proxy: Container, client: Container, mode: str, *hosts: str) -> None:
    """Write the client's policy as the orchestrator does: a tar through ``docker exec`` as
    the proxy user, extracted under a dot name then renamed (a reader never sees half)."""
    ip = ip_of(client)
    data = "".join(f"{line}\n" for line in (mode, *hosts)).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f".new-{ip}")
        info.size, info.mode = len(data), 0o640
        tar.addfile(info, io.BytesIO(data))
    done = subprocess.run(
        ["docker", "exec", "-i", "-u", "13:13", str(proxy.id), "sh", "-c",
         'cd /run/ad-sandbox/policy && tar -x -f - && mv -f ".new-$1" "$1"', "sh", ip],
        input=buf.getvalue(), capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def drop_policy(proxy: Container, client: Container) -> None:
    proxy_sh(proxy, f"rm -f /run/ad-sandbox/policy/{ip_of(client)}")


def take_decisions(proxy: Container, client: Container) -> list[str]:
    """Read and delete the client's decisions file, as the orchestrator does at run end."""
    path = f"/run/ad-sandbox/decisions/{ip_of(client)}"
    out = proxy_sh(proxy, f"if [ -f {path} ]; then mv {path} {path}.taken && "
                           f"cat {path}.taken && rm {path}.taken; fi")
    return out.splitlines()


def exec_text(container: Container, argv: list[str], **options: Any) -> tuple[int, str]:
    code, out = container.exec_run(argv, **options)
    assert isinstance(out, bytes)
    return -1 if code is None else code, out.decode(errors="replace")


def proxy_sh(proxy: Container, script: str) -> str:
    code, out = exec_text(proxy, ["sh", "-c", script], user="13:13")
    assert code == 0, out
    return out


def run_client(container: Container, command: str, *args: str,
               **environment: str) -> dict[str, Any]:
    code, text = exec_text(container, ["python3", "-c", CLIENT, command, *args],
                           environment=environment or None)
    assert code == 0, text
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


def decided(lines: list[str]) -> list[str]:
    """Decision lines without their time: ``allow allowed.test http``."""
    for line in lines:
        assert DECISION.match(line), f"malformed decision line: {line!r}"
    return [line.split(" ", 1)[1] for line in lines]

