"""The egress proxy's logic (issue 10) over fakes: policies, decisions, lifecycle, firewall.

The real proxy is driven in tests/docker/test_proxy.py and tests/security/test_egress.py.
"""

from __future__ import annotations

import pytest

from orchestrator.config import Agent
from orchestrator.errors import SandboxError
from orchestrator.models import EgressLog
from orchestrator.run import egress
from orchestrator.run.egress import (
    EGRESS_NETWORK,
    PROXY_UID,
    EgressProxy,
    Proxy,
    denied_hint,
    parse_decisions,
    policy_text,
    proxy_env,
)
from orchestrator.run.sandbox import AGENTS_NETWORK, MANAGED
from orchestrator.runtime.base import ContainerSpec, NetworkInfo
from orchestrator.runtime.fake import FakeExec, FakeRuntime
from orchestrator.runtime.firewall import (
    EGRESS_CHAIN,
    EGRESS_JUMP,
    PROXY_CHAIN,
    PROXY_JUMP,
    ensure_proxy_paths,
)
from tests.unit.test_firewall import GW, JUMP_TEXT, FakeTables, wall


def agent(**fields: object) -> Agent:
    return Agent.model_validate({"directory": "/srv/proj", **fields})


def test_the_policy_names_the_mode_and_only_an_allowlist_names_hosts() -> None:
    allow = agent(network={"egress": "allowlist"}, allow_hosts=["Api.Example.org", "*.github.com"])
    assert policy_text(allow) == "allowlist\napi.example.org\n*.github.com\n"
    learn = agent(network={"egress": "learn"}, allow_hosts=["api.example.org"])
    assert policy_text(learn) == "learn\n"
    assert policy_text(agent(network={"egress": "open"})) == "open\n"


@pytest.mark.parametrize("hosts", [["a b"], ["*"], ["http://x.org"], ["x.org/path"],
                                   ["*.*.org"], ["x..org"], ["-x.org"]])
def test_allow_hosts_that_are_not_host_names_are_config_errors(hosts: list[str]) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        agent(network={"egress": "allowlist"}, allow_hosts=hosts)


def test_allow_hosts_without_egress_are_a_config_error_not_ignored() -> None:
    with pytest.raises(ValueError, match=r"network\.egress is none"):
        agent(allow_hosts=["api.example.org"])


def test_gateway_only_is_the_old_name_of_none() -> None:
    assert not agent(network={"egress": "gateway-only"}).network.proxied
    assert not agent().network.proxied
    assert agent(network={"egress": "learn"}).network.proxied


def test_decisions_are_counted_per_host_and_a_handshake_is_not_counted_twice() -> None:
    text = "\n".join([
        "1.0 allow api.example.org connect",
        "1.1 allow api.example.org sni",
        "1.2 allow api.example.org connect",
        "1.3 deny evil.example connect",
        "1.4 deny evil.example http",
        "1.5 deny other.example sni",
        "1.6 allow cdn.example.net http",
    ])
    log = parse_decisions(text, "allowlist")
    assert log == EgressLog(mode="allowlist",
                            allowed={"api.example.org": 2, "cdn.example.net": 1},
                            denied={"evil.example": 2, "other.example": 1})


def test_hostile_decision_lines_never_reach_the_record_as_they_are() -> None:
    text = "\n".join([
        "garbage",
        "1.0 allow",
        "1.0 maybe x.org http",
        "1.0 deny \x1b[31mred\x1b[0m http",
        "1.0 deny " + "a" * 300 + " http",
        "1.0 deny <script>alert(1)</script> http",
        "1.0 deny ok.example http extra",
    ])
    log = parse_decisions(text, "learn")
    assert log.allowed == {}
    assert log.denied == {"(unreadable)": 3}


def test_distinct_hosts_are_capped() -> None:
    text = "\n".join(f"1.0 deny h{i}.example http" for i in range(egress.MAX_HOSTS + 20))
    log = parse_decisions(text, "allowlist")
    assert len(log.denied) == egress.MAX_HOSTS + 1 and log.denied["(other)"] == 20


def test_a_failed_run_with_denials_is_told_what_to_allow() -> None:
    hint = denied_hint(EgressLog(mode="allowlist", denied={"api.example.org": 3}))
    assert hint is not None and "denied egress to api.example.org" in hint and "allow_hosts" in hint
    assert denied_hint(EgressLog(mode="allowlist", allowed={"x.org": 1})) is None
    assert denied_hint(None) is None


def test_the_proxy_variables_keep_the_gateway_direct() -> None:
    env = proxy_env(Proxy("c1", "172.19.0.9"), "172.19.0.1")
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://172.19.0.9:3128"
    assert env["NO_PROXY"].split(",")[0] == "172.19.0.1" and env["no_proxy"] == env["NO_PROXY"]


# ---- the keeper over the fake engine ------------------------------------------------------


class ProxyEngine(FakeRuntime):
    """A fake engine whose proxy answers the readiness probe and keeps the policy files."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, str] = {}
        self.owners: dict[str, str] = {}
        self.decisions: dict[str, str] = {}
        self.ready = True
        self.on_command("sh", self._script)
        self.ensure_network(AGENTS_NETWORK, internal=True, labels=MANAGED)

    def _script(self, proc: FakeExec) -> int:
        script, args = proc.argv[2], proc.argv[4:]
        if "squid/ready" in script:
            return 0 if self.ready else 1
        if script == egress._OPEN_SCRIPT:
            self.files[args[0]] = proc.stdin.decode()
            self.owners[args[0]] = args[1]
        elif script == egress._CLOSE_SCRIPT:
            self.files.pop(args[0], None)
            self.owners.pop(args[0], None)
            for line in self.decisions.pop(args[0], "").splitlines():
                proc.out(line)
        elif script == egress._LIST_SCRIPT:
            for client, owner in self.owners.items():
                proc.out(f"{client} {owner}")
        elif script == egress._DROP_SCRIPT:
            for client, owner in zip(args[::2], args[1::2], strict=True):
                if self.owners.get(client) == owner:
                    self.files.pop(client)
                    self.owners.pop(client)
        return 0


AGENTS = NetworkInfo(AGENTS_NETWORK, "172.19.0.1", True, subnet="172.19.0.0/16")


def keeper(engine: FakeRuntime, guarded: list[str]) -> EgressProxy:
    return EgressProxy(engine, guarded.append, ensure_image=lambda progress: None)


def test_the_proxy_is_started_hardened_once_and_its_path_opened() -> None:
    engine, guarded = ProxyEngine(), []
    proxy = keeper(engine, guarded).ensure(AGENTS)
    (state,) = engine.list_managed({egress.LABEL_ROLE: egress.ROLE})
    spec = engine._get(state.id).spec
    assert spec.user == f"{PROXY_UID}:{PROXY_UID}" and spec.network == EGRESS_NETWORK
    assert spec.mounts[0].source == egress.PROXY_VOLUME and spec.tmpfs == {}
    # Never through the proxy: other runs, the gateway's host, the host on the egress side.
    egress_gateway = engine.networks[EGRESS_NETWORK].gateway_ip
    assert spec.env[egress.DENY_ENV] == f"172.19.0.0/16 {egress_gateway}/32"
    assert set(state.addresses) == {EGRESS_NETWORK, AGENTS_NETWORK}
    assert proxy.address == state.addresses[AGENTS_NETWORK] and guarded == [proxy.address]
    again = keeper(engine, guarded).ensure(AGENTS)
    assert again == proxy and len(engine.list_managed()) == 1


def test_a_dead_or_silent_proxy_is_replaced() -> None:
    engine, guarded = ProxyEngine(), []
    first = keeper(engine, guarded).ensure(AGENTS)
    engine.kill(first.container_id)
    second = keeper(engine, guarded).ensure(AGENTS)
    assert second.container_id != first.container_id
    assert engine.inspect(first.container_id) is None


def test_a_proxy_that_never_answers_fails_with_its_log_and_leaves_nothing() -> None:
    engine, guarded = ProxyEngine(), []
    engine.ready = False
    with pytest.raises(SandboxError, match="did not accept connections"):
        keeper(engine, guarded).ensure(AGENTS)
    assert engine.list_managed() == [] and guarded == []


def test_a_policy_is_written_per_client_and_its_decisions_read_back() -> None:
    engine, guarded = ProxyEngine(), []
    keep = keeper(engine, guarded)
    proxy = keep.ensure(AGENTS)
    allow = agent(network={"egress": "allowlist"}, allow_hosts=["api.example.org"])
    keep.open(proxy, "172.19.0.5", allow, "c0ffee" * 4)
    assert engine.files == {"172.19.0.5": "allowlist\napi.example.org\n"}
    engine.decisions["172.19.0.5"] = "1.0 allow api.example.org connect\n1.1 deny x.org http"
    log = keep.close(proxy, "172.19.0.5", "allowlist")
    assert log.allowed == {"api.example.org": 1} and log.denied == {"x.org": 1}
    assert engine.files == {}


@pytest.mark.parametrize("client", ["../etc/passwd", "172.19.0.5; rm -rf /", "", "::1"])
def test_a_client_that_is_not_an_address_is_refused(client: str) -> None:
    engine, guarded = ProxyEngine(), []
    keep = keeper(engine, guarded)
    proxy = keep.ensure(AGENTS)
    with pytest.raises(SandboxError, match="not an IPv4 address"):
        keep.open(proxy, client, agent(network={"egress": "learn"}), "c0ffee" * 4)


def test_a_policy_left_by_a_dead_run_is_dropped_before_its_address_is_lent_again() -> None:
    engine, guarded = ProxyEngine(), []
    keep = keeper(engine, guarded)
    proxy = keep.ensure(AGENTS)
    spec = ContainerSpec(name="run", image="agent", user="1000:1000", workdir="/", env={},
                         labels={}, mounts=(), tmpfs={}, network=AGENTS_NETWORK, cpus=1,
                         memory_bytes=1 << 30, pids_limit=64)
    running = engine.create(spec)
    live_address = engine.inspect(running).addresses[AGENTS_NETWORK]  # type: ignore[union-attr]
    learn = agent(network={"egress": "learn"})
    keep.open(proxy, live_address, learn, running)
    keep.open(proxy, "172.19.0.77", learn, "dead" * 8)  # its process was killed mid-run
    keep.ensure(AGENTS)
    assert set(engine.files) == {live_address}


# ---- the host firewall's part ------------------------------------------------------------


def test_the_proxy_path_and_the_egress_bridge_rules_are_installed_once() -> None:
    tables = FakeTables()
    tables.chains["DOCKER-USER"] = ["-j RETURN"]
    ensure_proxy_paths("172.19.0.250", 3128, runner=tables)
    assert tables.chains["DOCKER-USER"][0] == " ".join(PROXY_JUMP)
    assert tables.chains["DOCKER-USER"][-1] == "-j RETURN"
    assert "-d 172.19.0.250/32 -p tcp -m tcp --dport 3128 -j ACCEPT" in tables.chains[PROXY_CHAIN]
    assert tables.chains["INPUT"] == [" ".join(EGRESS_JUMP)]
    assert tables.chains[EGRESS_CHAIN][-1].startswith("-j REJECT")
    restores = len(tables.restores)
    # The agents' own INPUT jump goes first; neither set of rules is then rewritten again.
    wall(tables).ensure(GW)
    assert tables.chains["INPUT"][0] == JUMP_TEXT
    ensure_proxy_paths("172.19.0.250", 3128, runner=tables)
    assert wall(tables).check(GW).in_place
    assert len(tables.restores) == restores + 1
    # A new proxy address replaces the old rule; nothing is duplicated.
    ensure_proxy_paths("172.19.0.251", 3128, runner=tables)
    assert sum("172.19.0.25" in r for r in tables.chains[PROXY_CHAIN]) == 1
    assert tables.chains["DOCKER-USER"].count(" ".join(PROXY_JUMP)) == 1
