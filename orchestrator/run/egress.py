"""The egress proxy (issue 10): the one way out of the agents network besides the gateway.

One squid container per engine (``images/proxy``), shared by every config:

- it sits on the agents network (internal; the host firewall opens its port, and only that,
  past the network's no-inter-container rule) and on the egress network (a plain bridge
  whose traffic to the host itself the firewall rejects);
- a run with ``network.egress`` other than ``none`` gets ``HTTP(S)_PROXY`` pointing at it.
  At the run's start its policy (the mode and ``allow_hosts`` of the config the run was
  checked against) is written to a file named by the run container's address in the
  proxy's state volume; squid's ACL helper reads it on every decision, so an edited
  ``allow_hosts`` applies to the next run with nothing restarted. A client with no policy
  file is refused everything;
- the helper appends each decision to a file per client address; the run reads and removes
  it at its end: the record's ``egress``. The address is the engine's, which a container
  without ``NET_ADMIN`` cannot change, so the attribution is unforgeable.

Every byte of a decisions file is hostile (the agent picks the host names): it is capped,
parsed, and host names are checked before they reach a record.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.config import Agent
from orchestrator.errors import AdSandboxError, SandboxError
from orchestrator.models import EgressLog
from orchestrator.run.sandbox import AGENTS_NETWORK, MANAGED
from orchestrator.runtime import proxy_image
from orchestrator.runtime.base import ContainerSpec, Mount, NetworkInfo, Runtime

log = logging.getLogger(__name__)

PROXY_NAME = "ad-sandbox-proxy"
EGRESS_NETWORK = "ad-sandbox-egress"
EGRESS_OPTIONS = {"com.docker.network.bridge.name": "ads-egress0"}
"""A pinned bridge name: the host firewall's rule for the proxy's side names it."""
PROXY_VOLUME = "ad-sandbox-proxy-state"
PROXY_PORT = 3128
PROXY_UID = 13
"""Debian's ``proxy`` user; squid runs as it from the start, with no capability."""
STATE_DIR = "/run/ad-sandbox"
DENY_ENV = "AD_SANDBOX_PROXY_DENY"
POLICY_DIR = f"{STATE_DIR}/policy"
OWNER_DIR = f"{STATE_DIR}/owner"
"""Which run container each policy was written for (its id), to find stale ones."""
DECISIONS_DIR = f"{STATE_DIR}/decisions"
LABEL_ROLE = "ad-sandbox.role"
ROLE = "egress-proxy"
READY_DEADLINE_S = 15.0
MAX_DECISION_BYTES = 1 << 20
MAX_HOSTS = 500
"""Distinct host names kept per verdict; the rest are counted under ``(other)``."""
_HOST = re.compile(r"[a-z0-9._:\[\]-]{1,253}")
_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")

_READY_PROBE = (
    f"i=0; while [ $i -lt {int(READY_DEADLINE_S * 10)} ]; do "
    f"[ -f {STATE_DIR}/squid/ready ] && exit 0; i=$((i+1)); sleep 0.1; done; exit 1"
)
"""``sh -c``: wait until the entry point says squid is ready (it has then served a warm-up
CONNECT through its SNI port: before that squid 5 fails the first tunnel)."""
_OPEN_SCRIPT = (
    f'set -e; umask 022; mkdir -p {POLICY_DIR} {DECISIONS_DIR} {OWNER_DIR}; '
    f'rm -f {DECISIONS_DIR}/"$1"; printf %s "$2" > {OWNER_DIR}/"$1"; '
    f'cat > {POLICY_DIR}/"$1".new; mv -f {POLICY_DIR}/"$1".new {POLICY_DIR}/"$1"'
)
"""``sh -c``: the policy on stdin becomes client $1's (atomically), container $2 its owner;
old decisions go."""
_CLOSE_SCRIPT = (
    f'rm -f {POLICY_DIR}/"$1" {OWNER_DIR}/"$1"; f={DECISIONS_DIR}/"$1"; [ -f "$f" ] || exit 0; '
    f'mv -f "$f" "$f.$$" && head -c {MAX_DECISION_BYTES} "$f.$$"; rm -f "$f.$$"'
)
"""``sh -c``: client $1 loses its policy; its decisions are printed (capped) and removed."""
_LIST_SCRIPT = (
    f'mkdir -p {OWNER_DIR}; cd {OWNER_DIR}; for f in *; do [ -f "$f" ] || continue; '
    'printf "%s %s\\n" "$f" "$(head -c 80 "$f")"; done'
)
"""``sh -c``: one ``<client> <owner container>`` line per policy."""
_DROP_SCRIPT = (
    'while [ $# -ge 2 ]; do '
    f'[ "$(head -c 80 {OWNER_DIR}/"$1" 2>/dev/null)" = "$2" ] && '
    f'rm -f {POLICY_DIR}/"$1" {OWNER_DIR}/"$1" {DECISIONS_DIR}/"$1"; shift 2; done; exit 0'
)
"""``sh -c``: for each (client, owner) pair, the policy goes if that owner still holds it."""


@dataclass(frozen=True)
class Proxy:
    container_id: str
    address: str
    """Its IPv4 address on the agents network."""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PROXY_PORT}"


def proxy_env(proxy: Proxy, gateway_host: str) -> dict[str, str]:
    """The variables that send a run's HTTP(S) through the proxy (curl, pip, npm, git, node
    and python read them); the gateway (the model API, nested dispatch) stays direct."""
    direct = ",".join(dict.fromkeys([gateway_host, "localhost", "127.0.0.1"]))
    return {
        "HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url,
        "http_proxy": proxy.url, "https_proxy": proxy.url,
        "NO_PROXY": direct, "no_proxy": direct,
    }


def policy_text(agent: Agent) -> str:
    """The policy file: the mode, then (allowlist) one host pattern per line."""
    hosts = agent.allow_hosts if agent.network.egress == "allowlist" else []
    return "\n".join([agent.network.egress, *hosts]) + "\n"


def parse_decisions(text: str, mode: str) -> EgressLog:
    """The record's ``egress`` from a decisions file (``<time> allow|deny <host> <stage>``
    per line). An allowed TLS handshake repeats its CONNECT, so it is not counted again."""
    allowed: Counter[str] = Counter()
    denied: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[1] not in ("allow", "deny"):
            continue
        _, verdict, host, stage = parts
        host = host.lower() if _HOST.fullmatch(host.lower()) else "(unreadable)"
        host = "(no name)" if host == "-" else host
        if verdict == "allow" and stage != "sni":
            allowed[host] += 1
        elif verdict == "deny":
            denied[host] += 1
    return EgressLog(mode=mode, allowed=_capped(allowed), denied=_capped(denied))


def _capped(counts: Counter[str]) -> dict[str, int]:
    kept = dict(counts.most_common(MAX_HOSTS))
    rest = sum(counts.values()) - sum(kept.values())
    if rest:
        kept["(other)"] = kept.get("(other)", 0) + rest
    return kept


def denied_hint(egress: EgressLog | None) -> str | None:
    """What a failed run's hint says when the proxy refused hosts during it."""
    if egress is None or not egress.denied:
        return None
    hosts = sorted(egress.denied, key=lambda h: -egress.denied[h])[:5]
    names = ", ".join(hosts)
    return (f"denied egress to {names}; add {'it' if len(hosts) == 1 else 'them'} to "
            "allow_hosts (or try network.egress: learn, then `ad-sandbox egress suggest`).")


GuardFn = Callable[[str], None]
"""Opens the agents' path to the proxy at an address in the host firewall."""
_Line = Callable[[str], None]
EnsureImage = Callable[..., None]
"""Builds the proxy image when it is missing (``progress=`` a line callback)."""


class EgressProxy:
    """Keeps the proxy running and writes the runs' policies; one per process, thread-safe."""

    def __init__(self, runtime: Runtime, guard: GuardFn,
                 *, ensure_image: EnsureImage | None = None) -> None:
        self.runtime = runtime
        self._guard = guard
        self._ensure_image = ensure_image
        self._lock = threading.Lock()

    def ensure(self, agents: NetworkInfo) -> Proxy:
        """The running, answering proxy (created, or recreated when it died) for runs on
        the ``agents`` network; blocking."""
        with self._lock:
            proxy = self._find() or self._start(agents)
            self._guard(proxy.address)
            self._prune(proxy, agents.name)
            return proxy

    def _prune(self, proxy: Proxy, network: str) -> None:
        """Policies whose container no longer holds their address go: a run that ended
        without removing its own (its process was killed) must not lend it to the next
        container the engine gives that address."""
        entries: list[str] = []
        self._exec(proxy, _LIST_SCRIPT, out=entries.append)
        live = {state.addresses.get(network): state.id
                for state in self.runtime.list_managed() if state.running}
        stale = []
        for entry in entries:
            client, _, owner = entry.partition(" ")
            if _ADDRESS.fullmatch(client) and live.get(client) != owner:
                stale += [client, owner or "-"]
        if stale:
            log.info("egress proxy: dropping %d stale polic(ies)", len(stale) // 2)
            self._exec(proxy, _DROP_SCRIPT, *stale)

    def _find(self) -> Proxy | None:
        for state in self.runtime.list_managed({LABEL_ROLE: ROLE}):
            address = state.addresses.get(AGENTS_NETWORK, "")
            if state.running and address and self._ready(state.id):
                return Proxy(state.id, address)
            log.warning("egress proxy %s is %s: replacing it", state.id[:12],
                        state.status if not state.running else "not answering")
            self.runtime.remove(state.id)
        return None

    def _start(self, agents: NetworkInfo) -> Proxy:
        (self._ensure_image or _build_if_changed)(progress=log.info)
        outside = self.runtime.ensure_network(EGRESS_NETWORK, internal=False, labels=MANAGED,
                                              options=EGRESS_OPTIONS)
        self.runtime.prepare_volume(PROXY_VOLUME, labels=MANAGED, image=proxy_image.PROXY_REF,
                                    uid=PROXY_UID, gid=PROXY_UID)
        spec = ContainerSpec(
            name=PROXY_NAME,
            image=proxy_image.PROXY_REF,
            user=f"{PROXY_UID}:{PROXY_UID}",
            workdir="/",
            env={DENY_ENV: " ".join(never_reached(agents, outside))},
            labels={LABEL_ROLE: ROLE},
            mounts=(Mount(PROXY_VOLUME, STATE_DIR, read_only=False, kind="volume"),),
            tmpfs={},  # squid writes only to the state volume; the root is read-only
            network=EGRESS_NETWORK,
            cpus=1.0,
            memory_bytes=256 * 1024**2,
            pids_limit=256,
            command=(),  # the image's entry point
        )
        try:
            container_id = self.runtime.create(spec)
        except SandboxError as exc:
            if exc.data.get("status") == 409:  # another process started it just now
                found = self._find()
                if found is not None:
                    return found
            raise
        try:
            address = self.runtime.connect_network(container_id, AGENTS_NETWORK,
                                                   aliases=[PROXY_NAME])
            if not self._ready(container_id):
                raise SandboxError(
                    f"the egress proxy did not accept connections within {READY_DEADLINE_S:.0f} s",
                    hint=f"See its log: `docker logs {PROXY_NAME}`.", container=container_id,
                    last_logs=self.runtime.logs(container_id, tail=30))
        except AdSandboxError:
            self.runtime.remove(container_id)
            raise
        log.info("egress proxy started: %s on %s", container_id[:12], address)
        return Proxy(container_id, address)

    def _ready(self, container_id: str) -> bool:
        try:
            result = self.runtime.exec(
                container_id, ["sh", "-c", _READY_PROBE], env={}, user=f"{PROXY_UID}",
                workdir="/", stdin_file=None, on_stdout_line=_ignore, on_stderr=_ignore)
        except SandboxError:
            return False
        return result.exit_code == 0

    def open(self, proxy: Proxy, client: str, agent: Agent, owner: str) -> None:
        """Client ``client`` (the address of run container ``owner``) gets ``agent``'s
        policy."""
        _check_address(client)
        if not _CONTAINER_ID.fullmatch(owner):
            raise SandboxError(f"not a container id: {owner!r}")
        self._exec(proxy, _OPEN_SCRIPT, client, owner, stdin=policy_text(agent).encode())

    def close(self, proxy: Proxy, client: str, mode: str) -> EgressLog:
        """Client ``client`` loses its policy; what the proxy decided for it."""
        _check_address(client)
        lines: list[str] = []
        self._exec(proxy, _CLOSE_SCRIPT, client, out=lines.append)
        return parse_decisions("\n".join(lines), mode)

    def _exec(self, proxy: Proxy, script: str, *args: str, stdin: bytes | None = None,
              out: _Line | None = None) -> None:
        errors: list[str] = []
        result = self.runtime.exec(
            proxy.container_id, ["sh", "-c", script, "sh", *args], env={},
            user=f"{PROXY_UID}:{PROXY_UID}", workdir="/", stdin_file=None,
            on_stdout_line=out or _ignore, on_stderr=errors.append, stdin_data=stdin)
        if result.exit_code != 0:
            raise SandboxError(
                f"the egress proxy could not update its policies ({' '.join(args[:1])}): "
                f"{''.join(errors).strip() or f'exit {result.exit_code}'}",
                hint=f"Check the proxy (`docker logs {PROXY_NAME}`); the next run replaces it "
                "if it is broken.", container=proxy.container_id)


def never_reached(agents: NetworkInfo, outside: NetworkInfo) -> list[str]:
    """What the proxy refuses to connect to in every mode, besides loopback and link-local
    (its image's own list): the agents network (other runs, the gateway's host address) and
    the host's address on the egress network."""
    cidrs = [agents.subnet or f"{agents.gateway_ip}/32", f"{outside.gateway_ip}/32"]
    return [c for c in cidrs if c and not c.startswith("/")]


def _build_if_changed(progress: Callable[[str], None]) -> None:
    """Build the proxy image when it is missing or its definition changed (0.3 s when not)."""
    proxy_image.build_proxy_image(progress=progress)


def _check_address(client: str) -> None:
    if not _ADDRESS.fullmatch(client):
        raise SandboxError(f"not an IPv4 address: {client!r}")


def _ignore(_line: str) -> None:
    return None
