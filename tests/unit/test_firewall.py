"""The host firewall's logic against an in-memory iptables; the real rules are proven by
``tests/security/test_network.py``."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence

import pytest
from starlette.applications import Starlette

from orchestrator.cli.doctor import check_firewall
from orchestrator.config import Config
from orchestrator.errors import FirewallError, SandboxError
from orchestrator.gateway.ports import listen_in_range
from orchestrator.run.netguard import guard_network
from orchestrator.runtime import firewall
from orchestrator.runtime.base import NetworkInfo
from orchestrator.runtime.firewall import (
    CHAIN,
    JUMP,
    Completed,
    FirewallStatus,
    HostFirewall,
    chain_rules,
    restore_script,
)

GW = "172.20.0.1"
JUMP_TEXT = " ".join(JUMP)


class FakeTables:
    """Just enough of ``iptables`` / ``iptables-restore`` for the module's calls."""

    def __init__(self, *, socket_match: bool = True) -> None:
        self.chains: dict[str, list[str]] = {"INPUT": []}
        self.socket_match = socket_match
        self.restores: list[str] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> Completed:
        args = [a for a in argv[1:] if a != "-w"]
        if argv[0].endswith("-restore"):
            assert args == ["--noflush"] and stdin is not None
            return self._restore(stdin)
        verb, chain, *rule = args
        if chain not in self.chains:
            return Completed(1, "", f"iptables: No chain/target/match by that name ({chain}).")
        if verb == "-S":
            lines = ["-P INPUT ACCEPT" if chain == "INPUT" else f"-N {chain}"]
            return Completed(0, "\n".join(lines + [f"-A {chain} {r}" for r in self.chains[chain]])
                             + "\n", "")
        assert verb == "-C"
        return Completed(0 if " ".join(rule) in self.chains[chain] else 1, "", "")

    def _restore(self, script: str) -> Completed:
        if "-m socket" in script and not self.socket_match:
            return Completed(2, "", "iptables-restore: line 4 failed: Couldn't load match `socket'")
        self.restores.append(script)
        chains = {k: list(v) for k, v in self.chains.items()}
        for line in script.splitlines():
            if line.startswith(":"):
                chains[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                _, chain, rest = line.split(" ", 2)
                chains[chain].append(rest)
            elif line.startswith("-D "):
                _, chain, rest = line.split(" ", 2)
                chains[chain].remove(rest)
            elif line.startswith("-I "):
                _, chain, position, rest = line.split(" ", 3)
                chains[chain].insert(int(position) - 1, rest)
        self.chains = chains  # one transaction
        return Completed(0, "", "")


def wall(tables: FakeTables, *, euid: int = 0, tool: str = "iptables") -> HostFirewall:
    return HostFirewall(tool, runner=tables, which=lambda name: f"/usr/sbin/{name}",
                        euid=lambda: euid)


def test_the_rules_allow_only_established_and_the_gateway_range() -> None:
    rules = [" ".join(r) for r in chain_rules(GW)]
    assert rules == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-d {GW}/32 -p tcp -m tcp --dport 47300:47399 -m socket -j ACCEPT",
        "-j REJECT --reject-with icmp-port-unreachable",
    ]
    assert " ".join(chain_rules(None)[-1]) == "-j REJECT --reject-with icmp6-port-unreachable"
    script = restore_script(chain_rules(GW), stale_jumps=2)
    assert script.splitlines()[:2] == ["*filter", f":{CHAIN} - [0:0]"]
    assert script.count(f"-D INPUT {JUMP_TEXT}") == 2
    assert script.rstrip().endswith(f"-I INPUT 1 {JUMP_TEXT}\nCOMMIT")


def test_ensure_installs_once_then_leaves_them_alone() -> None:
    tables = FakeTables()
    tables.chains["INPUT"] = ["-i eth0 -j ACCEPT"]
    status = wall(tables).ensure(GW)
    assert status.in_place and status.socket_match and GW in status.detail
    assert tables.chains["INPUT"] == [JUMP_TEXT, "-i eth0 -j ACCEPT"]
    assert tables.chains[CHAIN] == [" ".join(r) for r in chain_rules(GW)]
    wall(tables).ensure(GW)
    assert len(tables.restores) == 1


@pytest.mark.parametrize("tamper", ["extra rule", "jump not first", "jump twice", "new gateway"])
def test_ensure_repairs_whatever_changed(tamper: str) -> None:
    tables = FakeTables()
    wall(tables).ensure(GW)
    gateway = GW
    if tamper == "extra rule":
        tables.chains[CHAIN].insert(0, "-j ACCEPT")
    elif tamper == "jump not first":
        tables.chains["INPUT"].insert(0, "-i ads-agents0 -j ACCEPT")
    elif tamper == "jump twice":
        tables.chains["INPUT"].append(JUMP_TEXT)
    else:
        gateway = "172.21.0.1"
    assert wall(tables).check(gateway).in_place is False
    assert wall(tables).ensure(gateway).in_place
    assert tables.chains["INPUT"].count(JUMP_TEXT) == 1
    assert tables.chains["INPUT"][0] == JUMP_TEXT
    assert tables.chains[CHAIN] == [" ".join(r) for r in chain_rules(gateway)]


def test_without_the_socket_match_the_range_alone_is_allowed() -> None:
    tables = FakeTables(socket_match=False)
    status = wall(tables).ensure(GW)
    assert status.in_place and not status.socket_match
    assert "without the socket match" in status.detail
    assert "-m socket" not in " ".join(tables.chains[CHAIN])


@pytest.mark.parametrize(("euid", "found", "words"), [
    (1000, True, "not running as root"),
    (0, False, "iptables-restore not found"),
])  # fmt: skip
def test_refuses_with_the_opt_out_in_the_hint(euid: int, found: bool, words: str) -> None:
    tables = FakeTables()
    firewall_ = HostFirewall(
        runner=tables, euid=lambda: euid,
        which=lambda name: f"/usr/sbin/{name}" if found or name == "iptables" else None)
    with pytest.raises(FirewallError) as caught:
        firewall_.ensure(GW)
    assert words in caught.value.message
    assert "settings.host_firewall: off" in caught.value.hint
    assert caught.value.exit_code == 4 and not tables.restores
    status = firewall_.check(None)
    assert not status.in_place and not status.installable


def test_ipv6_chain_rejects_everything_but_replies() -> None:
    tables = FakeTables()
    status = wall(tables, tool="ip6tables").ensure(GW)
    assert status.in_place
    assert tables.chains[CHAIN] == [" ".join(r) for r in chain_rules(None)]


def test_guard_network_honours_the_opt_out() -> None:
    calls: list[str] = []

    def fake(ip: str) -> FirewallStatus:
        calls.append(ip)
        return FirewallStatus(True, "ok")

    network = NetworkInfo("ad-sandbox-agents", GW, True)
    required = Config.model_validate({})
    off = Config.model_validate({"settings": {"host_firewall": "off"}})
    assert guard_network(network, off, firewall=fake) is None and calls == []
    assert guard_network(network, required, firewall=fake) == FirewallStatus(True, "ok")
    assert calls == [GW]


@pytest.mark.parametrize(("status", "setting", "want"), [
    (FirewallStatus(True, "in place"), "required", "ok"),
    (FirewallStatus(False, "chain missing"), "required", "warn"),
    (FirewallStatus(False, "not running as root", installable=False), "required", "fail"),
    (FirewallStatus(False, "not running as root", installable=False), "off", "warn"),
])  # fmt: skip
def test_doctor_reports_the_firewall(monkeypatch: pytest.MonkeyPatch, status: FirewallStatus,
                                     setting: str, want: str) -> None:
    monkeypatch.setattr(firewall, "firewall_status", lambda: status)
    check = check_firewall(Config.model_validate({"settings": {"host_firewall": setting}}))
    assert check.status == want
    assert (check.exit_code == 4) == (want == "fail")


@contextlib.contextmanager
def _held(ports: range) -> Iterator[None]:
    sockets = []
    try:
        for port in ports:
            sock = socket.socket()
            sockets.append(sock)  # closed below even when the bind fails
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        yield
    finally:
        for sock in sockets:
            sock.close()


def _free_block(size: int) -> range:
    for start in range(42000, 43000, size):
        block = range(start, start + size)
        with contextlib.suppress(OSError), _held(block):
            return block
    raise AssertionError("no free block of ports")


def test_the_gateway_listens_inside_its_range() -> None:
    block = _free_block(3)
    with _held(block[:2]):
        server = listen_in_range(Starlette(), "127.0.0.1", block)
        try:
            assert server.port == block[2]
        finally:
            server.stop()
        with _held(block[2:]), pytest.raises(SandboxError, match="no free gateway port"):
            listen_in_range(Starlette(), "127.0.0.1", block)
