"""The host firewall that makes the agents network gateway-only (issue 7, item 6).

Docker's internal network keeps a container off other networks, but every address of the
host itself (the agents bridge's own, docker0's, eth0's) is local delivery: packets from the
agents bridge go through the ``INPUT`` chain, where Docker 20.10 installs nothing, so any
host service bound to ``0.0.0.0`` answers a run. This module owns one chain, jumped to first
from ``INPUT`` for packets arriving on the agents bridge (whose name the network pins)::

    -A INPUT -i ads-agents0 -j AD-SANDBOX-INPUT
    -A AD-SANDBOX-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    -A AD-SANDBOX-INPUT -d <gateway>/32 -p tcp -m tcp --dport 47300:47399 -m socket -j ACCEPT
    -A AD-SANDBOX-INPUT -j REJECT --reject-with icmp-port-unreachable

Why it is built this way:

- The rules are static. Every gateway binds a port in :data:`GATEWAY_PORTS`, so no rule
  belongs to a process: a ``kill -9`` of an orchestrator leaves nothing stale and nothing
  open, and several orchestrators share the same rules.
- ``-m socket`` (without ``--nowildcard``) matches only listeners bound to a specific
  address, as the gateways are; a host service on ``0.0.0.0`` whose port falls in the range
  still does not answer. Kernels without the match fall back to the range alone (logged).
- The chain and the ``INPUT`` jump are replaced in one ``iptables-restore --noflush``
  transaction under a file lock, so there is no moment without the rules and concurrent
  orchestrators do not duplicate them. Docker's own chains are never touched.
- ``ip6tables`` gets the same chain without the ACCEPT for the gateway (containers have IPv6
  off; this is defence in depth), when the tool exists.

Only argv lists are run; nothing from a container reaches them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import FirewallError

log = logging.getLogger(__name__)

CHAIN = "AD-SANDBOX-INPUT"
BRIDGE = "ads-agents0"
"""The agents network's bridge interface, pinned by the network's options."""
GATEWAY_PORTS = range(47300, 47400)
"""Every gateway listens on one of these ports of the agents network's gateway address."""
NETWORK_OPTIONS = {
    "com.docker.network.bridge.name": BRIDGE,
    "com.docker.network.bridge.enable_icc": "false",
}
"""Driver options of the agents network: a stable bridge name, no container-to-container."""
LOCK_DIRS = (Path("/run/lock"), Path("/run"), Path("/tmp"))
TIMEOUT_S = 20.0
OPT_OUT_HINT = ("Run as root with iptables installed (`apt-get install iptables`), or set "
                "`settings.host_firewall: off` to run without it (then every host service "
                "answers the agents).")



@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], str | None], Completed]


@dataclass(frozen=True)
class FirewallStatus:
    """Whether the rules are in place, and what ``doctor`` says about them."""

    in_place: bool
    detail: str
    socket_match: bool = True
    installable: bool = True
    """False when this process could not install them (not root, no iptables)."""


def run_tool(argv: Sequence[str], stdin: str | None) -> Completed:
    """Run one firewall tool; a missing binary or a hang becomes a failed result."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Completed(127, "", str(exc))
    return Completed(done.returncode, done.stdout, done.stderr)


def chain_rules(gateway_ip: str | None, *, socket_match: bool = True) -> list[list[str]]:
    """The chain's rules, in order, as iptables prints them.

    ``gateway_ip`` None is the IPv6 chain: the gateways listen on IPv4 only.
    """
    rules = [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]]
    if gateway_ip is None:
        return [*rules, ["-j", "REJECT", "--reject-with", "icmp6-port-unreachable"]]
    ports = f"{GATEWAY_PORTS.start}:{GATEWAY_PORTS.stop - 1}"
    accept = ["-d", f"{gateway_ip}/32", "-p", "tcp", "-m", "tcp", "--dport", ports]
    rules.append([*accept, *(["-m", "socket"] if socket_match else []), "-j", "ACCEPT"])
    return [*rules, ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"]]


JUMP = ["-i", BRIDGE, "-j", CHAIN]


def restore_script(rules: list[list[str]], stale_jumps: int) -> str:
    """One transaction: (re)declare the chain (which empties it), fill it, and make the
    ``INPUT`` jump the first rule exactly once."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += [" ".join(["-A", CHAIN, *rule]) for rule in rules]
    lines += [" ".join(["-D", "INPUT", *JUMP])] * stale_jumps
    lines += [" ".join(["-I", "INPUT", "1", *JUMP]), "COMMIT", ""]
    return "\n".join(lines)


def find_tool(name: str) -> str | None:
    """The tool's absolute path; the sbin directories count even when PATH lacks them."""
    extra = os.pathsep.join(("/usr/sbin", "/sbin"))
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}{extra}")


class HostFirewall:
    """Installs and checks the rules with one tool family (``iptables`` or ``ip6tables``)."""

    def __init__(self, tool: str = "iptables", *, runner: Runner = run_tool,
                 which: Callable[[str], str | None] = find_tool,
                 euid: Callable[[], int] = os.geteuid) -> None:
        self.tool = tool
        self._run = runner
        self._euid = euid
        self._paths = {name: which(name) for name in (tool, f"{tool}-restore")}

    @property
    def ipv6(self) -> bool:
        return self.tool.startswith("ip6")

    def available(self) -> str | None:
        """Why the rules cannot be managed here, or None."""
        missing = [name for name, path in self._paths.items() if path is None]
        if missing:
            return f"{' and '.join(missing)} not found"
        if self._euid() != 0:
            return "not running as root (the host firewall needs it)"
        return None

    def _cmd(self, *args: str) -> Completed:
        return self._run([self._paths[self.tool] or self.tool, "-w", *args], None)

    def check(self, gateway_ip: str | None) -> FirewallStatus:
        """Whether the jump is INPUT's first rule, once, and the chain holds exactly our
        rules (with or without the socket match); ``gateway_ip`` None: any gateway."""
        problem = self.available()
        if problem is not None:
            return FirewallStatus(False, problem, installable=False)
        listed = self._cmd("-S", "INPUT")
        if listed.code != 0:
            return FirewallStatus(False, f"{self.tool} -S INPUT failed: {listed.stderr.strip()}")
        jumps = _rules_of(listed.stdout, "INPUT")
        wanted_jump = " ".join(JUMP)
        if not jumps or jumps[0] != wanted_jump:
            return FirewallStatus(False, f"INPUT does not jump to {CHAIN} first for {BRIDGE}")
        if jumps.count(wanted_jump) != 1:
            return FirewallStatus(False, f"INPUT jumps to {CHAIN} more than once")
        chain = self._cmd("-S", CHAIN)
        if chain.code != 0:
            return FirewallStatus(False, f"chain {CHAIN} is missing")
        have = _rules_of(chain.stdout, CHAIN)
        if self.ipv6:
            candidates = [(chain_rules(None), True)]
            where = ""
        else:
            gateway = gateway_ip or _gateway_in(have)
            if gateway is None:
                return FirewallStatus(False, f"chain {CHAIN} has no rule for a gateway")
            candidates = [(chain_rules(gateway, socket_match=m), m) for m in (True, False)]
            where = f" (gateway {gateway}, ports {GATEWAY_PORTS.start}-{GATEWAY_PORTS.stop - 1})"
        for rules, socket_match in candidates:
            if self._holds_exactly(have, rules):
                fallback = "" if socket_match else ", without the socket match"
                return FirewallStatus(True, f"{CHAIN} on {BRIDGE}{where}{fallback}",
                                      socket_match=socket_match)
        return FirewallStatus(False, f"chain {CHAIN} differs from the expected rules")

    def _holds_exactly(self, have: list[str], rules: list[list[str]]) -> bool:
        """The chain is these rules and no other, the REJECT last (``-C`` compares them
        whatever the tool's canonical spelling)."""
        if len(have) != len(rules) or not have or not have[-1].startswith("-j REJECT"):
            return False
        return all(self._cmd("-C", CHAIN, *rule).code == 0
                   for rule in rules)

    def ensure(self, gateway_ip: str) -> FirewallStatus:
        """Put the rules in place (no-op when they are); raises FirewallError when it cannot."""
        problem = self.available()
        if problem is not None:
            raise FirewallError(f"cannot install the host firewall: {problem}",
                                hint=OPT_OUT_HINT, tool=self.tool)
        target = None if self.ipv6 else gateway_ip
        with _locked():
            status = self.check(target)
            if status.in_place:
                return status
            listed = self._cmd("-S", "INPUT")
            stale = _rules_of(listed.stdout, "INPUT").count(" ".join(JUMP))
            error = self._restore(chain_rules(target), stale)
            if error is not None and not self.ipv6 and "socket" in error:
                log.warning("the kernel lacks the iptables socket match (%s); allowing the "
                            "gateway port range without it", error)
                error = self._restore(chain_rules(target, socket_match=False), stale)
            if error is not None:
                raise FirewallError(f"{self.tool}-restore refused the rules: {error}",
                                    hint=OPT_OUT_HINT, tool=self.tool)
            status = self.check(target)
        if not status.in_place:
            raise FirewallError(f"host firewall not in place after installing it: {status.detail}",
                                hint=OPT_OUT_HINT, tool=self.tool)
        log.info("host firewall: %s", status.detail)
        return status

    def _restore(self, rules: list[list[str]], stale: int) -> str | None:
        restore = self._paths[f"{self.tool}-restore"] or f"{self.tool}-restore"
        done = self._run([restore, "-w", "--noflush"], restore_script(rules, stale))
        return None if done.code == 0 else (done.stderr.strip() or f"exit {done.code}")


def ensure_host_firewall(gateway_ip: str, *, runner: Runner | None = None) -> FirewallStatus:
    """The IPv4 rules (required) and the IPv6 ones (when ip6tables exists); ``runner``
    runs the tools elsewhere (on the host, from a containerised orchestrator)."""
    status = HostFirewall("iptables", **_through(runner)).ensure(gateway_ip)
    six = HostFirewall("ip6tables", **_through(runner))
    if six.available() is None:
        try:
            six.ensure(gateway_ip)
        except FirewallError as exc:  # containers have IPv6 off; v4 is the boundary
            log.warning("IPv6 host firewall not installed: %s", exc.one_line())
    return status


FORWARD_CHAIN = "AD-SANDBOX-FORWARD"
FORWARD_JUMP = ["-i", BRIDGE, "-o", BRIDGE, "-j", FORWARD_CHAIN]


def forward_rules(relay_ip: str) -> list[list[str]]:
    """Agents to a containerised orchestrator's relay: the one bridged path allowed past the
    network's no-inter-container-traffic drop (its ports only), and the answers back."""
    ports = f"{GATEWAY_PORTS.start}:{GATEWAY_PORTS.stop - 1}"
    return [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-d", f"{relay_ip}/32", "-p", "tcp", "-m", "tcp", "--dport", ports, "-j", "ACCEPT"]]


def ensure_relay_path(relay_ip: str, *, runner: Runner | None = None) -> None:
    """Make ``relay_ip`` (a container on the agents bridge) reachable on the gateway ports:
    a chain jumped to first from Docker's ``DOCKER-USER`` for traffic within the bridge,
    replaced in one transaction like the ``INPUT`` chain. One relay per engine: the chain
    names only the latest address."""
    _ensure_chain("DOCKER-USER", FORWARD_JUMP, forward_rules(relay_ip), runner=runner,
                  what=f"the path to the relay at {relay_ip}")


PROXY_CHAIN = "AD-SANDBOX-PROXY"
PROXY_JUMP = ["-i", BRIDGE, "-o", BRIDGE, "-j", PROXY_CHAIN]
EGRESS_BRIDGE = "ads-egress0"
"""The egress network's bridge interface (the proxy's way out), pinned by its options."""
EGRESS_CHAIN = "AD-SANDBOX-EGRESS"
EGRESS_JUMP = ["-i", EGRESS_BRIDGE, "-j", EGRESS_CHAIN]


def proxy_rules(proxy_ip: str, port: int) -> list[list[str]]:
    """Agents to the egress proxy: its port only, past the no-inter-container drop."""
    return [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-d", f"{proxy_ip}/32", "-p", "tcp", "-m", "tcp", "--dport", str(port),
             "-j", "ACCEPT"]]


def egress_input_rules() -> list[list[str]]:
    """From the egress bridge to the host itself: answers only. The proxy reaches the world
    through it, never a service of the host (any host address is local delivery)."""
    return [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"]]


def ensure_proxy_paths(proxy_ip: str, port: int, *, runner: Runner | None = None) -> None:
    """The agents' path to the proxy at ``proxy_ip`` (one proxy per engine: the chain names
    only the latest address) and the egress bridge closed to the host."""
    _ensure_chain("DOCKER-USER", PROXY_JUMP, proxy_rules(proxy_ip, port), runner=runner,
                  what=f"the path to the egress proxy at {proxy_ip}")
    _ensure_chain("INPUT", EGRESS_JUMP, egress_input_rules(), runner=runner,
                  what="the egress bridge's rules")


def _ensure_chain(parent: str, jump: list[str], rules: list[list[str]], *,
                  runner: Runner | None, what: str) -> None:
    """A chain holding exactly ``rules``, jumped to first (once) from ``parent`` by
    ``jump``; replaced in one ``iptables-restore`` transaction when it differs."""
    fw = HostFirewall("iptables", **_through(runner))
    chain = jump[-1]
    problem = fw.available()
    if problem is not None:
        raise FirewallError(f"cannot install {what}: {problem}", hint=OPT_OUT_HINT, tool=fw.tool)
    with _locked():
        have = fw._cmd("-S", chain)
        wanted = [" ".join(rule) for rule in rules]
        listed = fw._cmd("-S", parent)
        if listed.code != 0:
            raise FirewallError(f"iptables -S {parent} failed: {listed.stderr.strip()}",
                                hint="Is the Docker engine's firewall setup (iptables: true) on?")
        jumps = _rules_of(listed.stdout, parent)
        joined = " ".join(jump)
        # Anywhere before Docker's closing RETURN: other chains of ours jump first too.
        ends = [i for i, rule in enumerate(jumps) if rule == "-j RETURN"]
        placed = joined in jumps and jumps.index(joined) < (ends[0] if ends else len(jumps))
        if (have.code == 0 and _rules_of(have.stdout, chain) == wanted and placed
                and jumps.count(joined) == 1):
            return
        lines = ["*filter", f":{chain} - [0:0]"]
        lines += [" ".join(["-A", chain, *rule]) for rule in rules]
        lines += [" ".join(["-D", parent, *jump])] * jumps.count(joined)
        lines += [" ".join(["-I", parent, "1", *jump]), "COMMIT", ""]
        restore = fw._paths["iptables-restore"] or "iptables-restore"
        done = fw._run([restore, "-w", "--noflush"], "\n".join(lines))
    if done.code != 0:
        raise FirewallError(f"iptables-restore refused {what}: {done.stderr.strip()}",
                            tool=fw.tool)
    log.info("host firewall: %s in place", what)


def _through(runner: Runner | None) -> dict[str, Any]:
    """HostFirewall arguments for tools run by ``runner`` (as root, found by its PATH)."""
    if runner is None:
        return {}
    return {"runner": runner, "which": lambda name: name, "euid": lambda: 0}


def firewall_status() -> FirewallStatus:
    """What ``doctor`` reports: the IPv4 rules for whatever gateway they name."""
    return HostFirewall("iptables").check(None)


def _rules_of(listing: str, chain: str) -> list[str]:
    prefix = f"-A {chain} "
    return [line[len(prefix):].strip() for line in listing.splitlines()
            if line.startswith(prefix)]


def _gateway_in(rules: list[str]) -> str | None:
    for rule in rules:
        parts = rule.split()
        if "-d" in parts and parts.index("-d") + 1 < len(parts):
            return parts[parts.index("-d") + 1].removesuffix("/32")
    return None


@contextmanager
def _locked() -> Iterator[None]:
    """One process at a time edits the rules (iptables' own lock covers single commands)."""
    directory = next((d for d in LOCK_DIRS if d.is_dir()), Path("."))
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(directory / "ad-sandbox-firewall.lock", flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
