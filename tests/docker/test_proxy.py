"""The egress proxy image for real: squid between an internal network and an outside world.

One proxy for the module, run as the orchestrator runs it (proxy user, read-only root,
no capabilities, state on one tmpfs), attached to a test-owned internal network and to a
test-owned egress network holding the world's servers (``allowed.test``,
``other.allowed.test``, ``denied.test``). Client containers sit on the internal network only
and reach the world through the proxy, with the world's CA and certificate checks on.
Each test writes the policy of its client first, so none leans on another's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from orchestrator.errors import AdSandboxError
from orchestrator.runtime import proxy_image
from orchestrator.runtime.images import BASE_REF
from tests.docker.egress_world import EgressWorld
from tests.docker.proxy_support import (
    DNS_LOGGER,
    PROXY_PORT,
    TEST_LABELS,
    decided,
    drop_policy,
    exec_text,
    gateway,
    ip_of,
    proxy_sh,
    run_client,
    set_policy,
    start_client,
    start_proxy,
    take_decisions,
)
from tests.docker.support import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAST_S = 3.0
"""A denial must come back this fast: a refusal, never a timeout."""


# --- the set-up: networks, world, proxy, clients ---------------------------------------


@pytest.fixture(scope="module")
def proxy_ref(docker_client: docker.DockerClient) -> str:
    """The proxy image of the assets in images/proxy (rebuilt when they changed)."""
    try:
        proxy_image.build_proxy_image(progress=lambda line: None)
    except AdSandboxError as exc:
        pytest.fail(f"could not build the proxy image: {exc.one_line()}", pytrace=False)
    return proxy_image.PROXY_REF


@pytest.fixture(scope="module")
def internal_network(docker_client: docker.DockerClient) -> Iterator[Network]:
    network = docker_client.networks.create(
        f"ad-sandbox-test-{uuid.uuid4().hex[:8]}", driver="bridge", internal=True,
        labels=TEST_LABELS)
    try:
        yield network
    finally:
        network.remove()


@pytest.fixture(scope="module")
def egress_network(docker_client: docker.DockerClient) -> Iterator[Network]:
    network = docker_client.networks.create(
        f"ad-sandbox-test-egress-{uuid.uuid4().hex[:8]}", driver="bridge",
        labels={**TEST_LABELS, "ad-sandbox.managed": "1"})
    try:
        network.reload()
        yield network
    finally:
        network.remove()


@pytest.fixture(scope="module")
def world(docker_client: docker.DockerClient, egress_network: Network) -> Iterator[EgressWorld]:
    with EgressWorld(docker_client, str(egress_network.name)) as made:
        yield made


@pytest.fixture(scope="module")
def proxy(docker_client: docker.DockerClient, proxy_ref: str, internal_network: Network,
          egress_network: Network, world: EgressWorld) -> Iterator[Container]:
    container = start_proxy(docker_client, proxy_ref, internal_network, egress_network)
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def client(docker_client: docker.DockerClient, internal_network: Network,
           world: EgressWorld, proxy: Container) -> Iterator[Container]:
    container = start_client(docker_client, internal_network, world)
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def other_client(docker_client: docker.DockerClient, internal_network: Network,
                 world: EgressWorld, proxy: Container) -> Iterator[Container]:
    container = start_client(docker_client, internal_network, world)
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture
def fresh(proxy: Container, client: Container) -> None:
    take_decisions(proxy, client)


# --- allowlist ---------------------------------------------------------------------------


def test_allowlist_allows_listed_names_over_http_and_https_with_certificate_checks(
        proxy: Container, client: Container, fresh: None) -> None:
    set_policy(proxy, client, "allowlist", "allowed.test", "*.allowed.test")
    for url, body in [("http://allowed.test/", "allowed.test http"),
                      ("https://allowed.test/", "allowed.test https"),
                      ("https://other.allowed.test/x", "other.allowed.test https")]:
        result = run_client(client, "fetch", url)
        assert (result["status"], result.get("body")) == (200, f"{body}\n"), (url, result)
        # Nothing about the client or the proxy is added on the way (plain HTTP included).
        assert result["seen"] == ["-", "-"], (url, result)
    lines = decided(take_decisions(proxy, client))
    assert lines == [
        "allow allowed.test http",
        "allow allowed.test connect", "allow allowed.test sni",
        "allow other.allowed.test connect", "allow other.allowed.test sni"], lines


def test_allowlist_denies_other_names_fast_with_a_clear_error(
        proxy: Container, client: Container, fresh: None) -> None:
    set_policy(proxy, client, "allowlist", "allowed.test")
    plain = run_client(client, "fetch", "http://denied.test/")
    assert plain["status"] == 403 and plain["elapsed"] < FAST_S, plain
    assert "Denied by the ad-sandbox egress policy: denied.test" in plain["body"], plain
    assert "denied.test is not in allow_hosts" in plain["body"], plain
    tls = run_client(client, "fetch", "https://denied.test/")
    assert tls["status"] is None and tls["elapsed"] < FAST_S, tls
    assert "Tunnel connection failed: 403" in tls["error"], tls
    # "*.allowed.test" is for names under allowed.test, not allowed.test itself.
    set_policy(proxy, client, "allowlist", "*.allowed.test")
    assert run_client(client, "fetch", "http://allowed.test/")["status"] == 403
    assert run_client(client, "fetch", "http://other.allowed.test/")["status"] == 200
    assert decided(take_decisions(proxy, client)) == [
        "deny denied.test http", "deny denied.test connect",
        "deny allowed.test http", "allow other.allowed.test http"]


def test_a_tunnel_to_an_allowed_name_whose_sni_names_another_host_is_refused(
        proxy: Container, client: Container, world: EgressWorld, fresh: None) -> None:
    set_policy(proxy, client, "allowlist", "allowed.test")
    # Without certificate checks in the client, only the proxy can stop this handshake.
    same = run_client(client, "tunnel", "allowed.test:443", "allowed.test", "no-verify")
    assert same["handshake"] == "ok" and "allowed.test https" in same["reply"], same
    other = run_client(client, "tunnel", "allowed.test:443", "denied.test", "no-verify")
    assert other["connect"].startswith("HTTP/1.1 200"), other
    assert other["handshake"] != "ok" and other["elapsed"] < FAST_S, other
    by_ip = run_client(client, "tunnel", f"{world.address('allowed.test')}:443",
                       "allowed.test", "no-verify")
    assert by_ip["connect"].startswith("HTTP/1.1 403"), by_ip
    assert decided(take_decisions(proxy, client)) == [
        "allow allowed.test connect", "allow allowed.test sni",
        "allow allowed.test connect", "deny denied.test sni",
        f"deny {world.address('allowed.test')} connect"]


def test_a_tunnel_must_carry_tls_to_an_allowed_port(
        proxy: Container, client: Container, fresh: None) -> None:
    set_policy(proxy, client, "open")
    # Port 80 is a CONNECT port of this proxy; its server speaks plain HTTP.
    plain = run_client(client, "tunnel", "allowed.test:80", "", "",
                       "GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n")
    assert "allowed.test http" not in plain.get("reply", ""), plain
    assert run_client(client, "tunnel", "allowed.test:8443", "", "")["connect"].startswith(
        "HTTP/1.1 403")
    assert run_client(client, "fetch", "ftp://allowed.test/")["status"] == 403
    assert run_client(client, "fetch", "http://allowed.test:25/")["status"] == 403


def test_no_route_around_the_proxy(client: Container, world: EgressWorld,
                                   egress_network: Network) -> None:
    connects = [f"{world.address('allowed.test')}:443", f"{world.address('denied.test')}:80",
                f"{gateway(egress_network)}:80"]
    names = ["allowed.test", "denied.test"]
    found = run_client(client, "bypass", *connects, *names)
    for target in connects:
        assert found[target] != "connected", found
    for name in names:
        assert found[name] == [], found


# --- other modes, other clients, and what holds in every mode -----------------------------


def test_learn_allows_everything_and_records_every_host(
        proxy: Container, client: Container, fresh: None) -> None:
    set_policy(proxy, client, "learn")
    assert run_client(client, "fetch", "http://denied.test/")["body"] == "denied.test http\n"
    assert run_client(client, "fetch", "https://denied.test/")["body"] == "denied.test https\n"
    assert decided(take_decisions(proxy, client)) == [
        "allow denied.test http", "allow denied.test connect", "allow denied.test sni"]


def test_a_policy_edit_applies_to_the_next_request_without_a_restart(
        proxy: Container, client: Container, fresh: None) -> None:
    started = proxy.attrs["State"]["StartedAt"]
    set_policy(proxy, client, "allowlist", "allowed.test")
    assert run_client(client, "fetch", "https://other.allowed.test/")["status"] is None
    set_policy(proxy, client, "allowlist", "allowed.test", "other.allowed.test")
    assert run_client(client, "fetch", "https://other.allowed.test/")["status"] == 200
    set_policy(proxy, client, "allowlist", "allowed.test")
    assert run_client(client, "fetch", "http://other.allowed.test/")["status"] == 403
    proxy.reload()
    assert proxy.attrs["State"]["StartedAt"] == started and proxy.status == "running"


def test_policy_is_per_client_and_no_policy_denies_everything(
        proxy: Container, client: Container, other_client: Container, fresh: None) -> None:
    set_policy(proxy, client, "open")
    drop_policy(proxy, other_client)
    take_decisions(proxy, other_client)
    assert run_client(client, "fetch", "http://denied.test/")["status"] == 200
    refused = run_client(other_client, "fetch", "http://allowed.test/")
    assert refused["status"] == 403, refused
    assert f"no egress allowed for {ip_of(other_client)}" in refused["body"]
    assert decided(take_decisions(proxy, other_client)) == ["deny allowed.test http"]


def test_loopback_link_local_and_the_host_are_never_reachable(
        proxy: Container, client: Container, world: EgressWorld, egress_network: Network,
        fresh: None) -> None:
    set_policy(proxy, client, "open")
    assert run_client(client, "fetch", f"http://{world.address('allowed.test')}/")[
        "body"] == "allowed.test http\n"
    for url in [f"http://127.0.0.1:{PROXY_PORT}/", "http://127.1:3129/", "http://[::1]:3128/",
                "http://2130706433:3128/", "http://localhost:3128/", "http://0.0.0.0:3128/",
                "http://169.254.169.254/", f"http://{gateway(egress_network)}/"]:
        result = run_client(client, "fetch", url)
        assert result["status"] == 403, (url, result)
        assert "an address no run may reach" in result["body"], (url, result)
    assert run_client(client, "tunnel", f"{gateway(egress_network)}:443", "x", "no-verify")[
        "connect"].startswith("HTTP/1.1 403")


def test_concurrent_decisions_are_whole_lines(
        proxy: Container, client: Container, fresh: None) -> None:
    set_policy(proxy, client, "allowlist", "allowed.test")
    urls = ["http://allowed.test/", "http://denied.test/", "https://allowed.test/"] * 40
    statuses = run_client(client, "many", *urls)["statuses"]
    assert statuses == [200, 403, 200] * 40
    lines = decided(take_decisions(proxy, client))
    assert sorted(lines) == sorted(["allow allowed.test http", "deny denied.test http",
                                    "allow allowed.test connect", "allow allowed.test sni"]
                                   * 40)


def test_the_proxy_runs_unprivileged_and_logs_each_request(
        proxy: Container, client: Container, fresh: None) -> None:
    assert proxy_sh(proxy, "id -u; id -g").split() == ["13", "13"]
    code, out = exec_text(proxy, ["sh", "-c", "touch /etc/x"], user="13:13")
    assert code != 0 and "Read-only file system" in out, out
    set_policy(proxy, client, "allowlist")
    assert run_client(client, "fetch", "http://denied.test/logged")["status"] == 403
    log = proxy.logs(stderr=False).decode(errors="replace")
    assert f"{ip_of(client)} TCP_DENIED/403 GET http://denied.test/logged" in log, log[-2000:]


def test_a_fresh_proxy_tunnels_its_first_connect(
        docker_client: docker.DockerClient, proxy_ref: str, internal_network: Network,
        egress_network: Network, world: EgressWorld) -> None:
    """squid 5 holds its own SNI port for down until it has reached it once; the entry
    point's warm-up must have done that by the time it says ready."""
    fresh_proxy = start_proxy(docker_client, proxy_ref, internal_network, egress_network,
                              alias="fresh-proxy")
    fresh_client = start_client(docker_client, internal_network, world)
    try:
        assert proxy_sh(fresh_proxy, "test -f /run/ad-sandbox/squid/ready && echo ready") == \
            "ready\n"
        set_policy(fresh_proxy, fresh_client, "allowlist", "allowed.test")
        first = run_client(fresh_client, "fetch", "https://allowed.test/first",
                           PROXY=f"fresh-proxy:{PROXY_PORT}")
        assert first.get("body") == "allowed.test https\n", first
    finally:
        fresh_client.remove(force=True)
        fresh_proxy.remove(force=True)


def test_a_denied_name_is_never_looked_up(
        docker_client: docker.DockerClient, proxy_ref: str, internal_network: Network,
        egress_network: Network, world: EgressWorld) -> None:
    """The proxy's DNS goes to a server that logs each name: a name the policy denies must
    never reach it; an allowed one (that does not exist) does, so the check can fail."""
    dns = docker_client.containers.run(
        BASE_REF, ["python3", "-c", DNS_LOGGER], detach=True, labels=TEST_LABELS,
        name=f"ad-sandbox-test-dns-{uuid.uuid4().hex[:8]}", network=str(egress_network.name))
    try:
        wait_for(lambda: b"dns ready" in dns.logs(), 30, "the logging DNS server")
        dns.reload()
        dns_ip = dns.attrs["NetworkSettings"]["Networks"][egress_network.name]["IPAddress"]
        dns_proxy = start_proxy(docker_client, proxy_ref, internal_network, egress_network,
                                alias="dns-proxy", dns=[dns_ip])
        dns_client = start_client(docker_client, internal_network, world)
        try:
            set_policy(dns_proxy, dns_client, "allowlist", "leak-allowed.example")
            via = {"PROXY": f"dns-proxy:{PROXY_PORT}"}
            for url in ["http://leak-denied.example/", "https://leak-denied-tls.example/"]:
                refused = run_client(dns_client, "fetch", url, **via)
                assert refused["status"] == 403 or "403" in refused.get("error", ""), refused
            missing = run_client(dns_client, "fetch", "http://leak-allowed.example/", **via)
            assert missing["status"] not in (None, 200, 403), missing  # allowed, no address
            # The name a tunnel's SNI gives is only compared, never resolved.
            sni = run_client(dns_client, "tunnel", "leak-allowed.example:443",
                             "leak-denied-sni.example", "no-verify", **via)
            assert sni.get("handshake") != "ok", sni
        finally:
            dns_client.remove(force=True)
            dns_proxy.remove(force=True)
        asked = dns.logs().decode(errors="replace")
        assert "query leak-allowed.example" in asked, asked
        assert "leak-denied" not in asked, asked
    finally:
        dns.remove(force=True)


def test_a_client_cannot_borrow_another_clients_policy(
        proxy: Container, client: Container, other_client: Container, fresh: None) -> None:
    """The SNI stage learns the client from the X-Forwarded-For squid adds on its own hop;
    one the client sends itself is not believed."""
    set_policy(proxy, client, "allowlist", "allowed.test")
    set_policy(proxy, other_client, "open")
    for claimed in (ip_of(other_client), f"{ip_of(other_client)}, 127.0.0.1", "127.0.0.1"):
        spoofed = run_client(client, "tunnel", "allowed.test:443", "denied.test", "no-verify",
                             "", claimed)
        assert spoofed.get("handshake") != "ok", (claimed, spoofed)
    assert decided(take_decisions(proxy, client)) == [
        "allow allowed.test connect", "deny denied.test sni"] * 3
