"""The agents network made gateway-only: Docker options plus the host firewall.

Two halves, both needed (SPEC §4, "from inside a run only the gateway answers"):

- the network is internal, with inter-container traffic off and a pinned bridge name
  (:data:`~orchestrator.runtime.firewall.NETWORK_OPTIONS`), so no run reaches another
  container or leaves the network;
- host rules on that bridge (:mod:`orchestrator.runtime.firewall`) let through only the
  gateways' ports, so no other host service answers, at any host address.

``settings.host_firewall: off`` is the explicit opt-out for machines where the rules cannot
be installed (not root, no iptables); otherwise a run refuses to start without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from orchestrator.config import Config
from orchestrator.run.egress import PROXY_PORT
from orchestrator.run.sandbox import AGENTS_NETWORK, MANAGED
from orchestrator.runtime.base import NetworkInfo, Runtime
from orchestrator.runtime.firewall import (
    NETWORK_OPTIONS,
    FirewallStatus,
    ensure_host_firewall,
    ensure_proxy_paths,
    ensure_relay_path,
)
from orchestrator.runtime.incontainer import (
    HostToolRunner,
    join_network,
    own_container_id,
    own_image,
)

log = logging.getLogger(__name__)

Firewall = Callable[[str], FirewallStatus]
_warned_off = False


def ensure_agents_network(runtime: Runtime) -> NetworkInfo:
    """The shared agents network, with the isolation options (recreated if it lacks them)."""
    return runtime.ensure_network(AGENTS_NETWORK, internal=True, labels=MANAGED,
                                  options=NETWORK_OPTIONS)


def guard_network(network: NetworkInfo, config: Config,
                  *, firewall: Firewall = ensure_host_firewall) -> FirewallStatus | None:
    """Put the host rules for ``network``'s gateway in place, unless opted out (None).

    Raises :class:`~orchestrator.errors.FirewallError` when they cannot be installed.
    """
    global _warned_off
    if config.settings.host_firewall == "off":
        if not _warned_off:
            log.warning("settings.host_firewall is off: every host service listening on the "
                        "agents network's addresses answers the agents")
            _warned_off = True
        return None
    return firewall(network.gateway_ip)


GATEWAY_HOST_AUTO = "auto"
"""``gateway_host`` of an orchestrator in a container: the relay on its own address."""
_runners: dict[str, HostToolRunner] = {}


def guard_relay(network: NetworkInfo, config: Config) -> str:
    """For an orchestrator in a container: join ``network``, open the agents' path to this
    container's relay ports and put the host rules in place (unless opted out), all through
    the engine; return the address the relay binds.

    The relay path is opened even with ``settings.host_firewall: off``: without it the
    network's no-inter-container rule leaves the relay unreachable.
    """
    me = own_container_id()
    relay_ip = join_network(me, network.name)
    runner = _runners.get(me)
    if runner is None:
        runner = _runners[me] = HostToolRunner(own_image(me), me)
    ensure_relay_path(relay_ip, runner=runner)
    guard_network(network, config, firewall=partial(ensure_host_firewall, runner=runner))
    return relay_ip


def proxy_guard(*, in_container: bool) -> Callable[[str], None]:
    """What opens the agents' path to the egress proxy at an address (and closes the egress
    bridge to the host): the host's iptables, through the engine when this process runs in
    a container. Needed even with ``settings.host_firewall: off``: without it the agents
    network's no-inter-container rule leaves the proxy unreachable."""
    def guard(address: str) -> None:
        runner = None
        if in_container:
            me = own_container_id()
            runner = _runners.get(me)
            if runner is None:
                runner = _runners[me] = HostToolRunner(own_image(me), me)
        ensure_proxy_paths(address, PROXY_PORT, runner=runner)
    return guard
