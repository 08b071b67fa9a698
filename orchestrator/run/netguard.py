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

from orchestrator.config import Config
from orchestrator.run.sandbox import AGENTS_NETWORK, MANAGED
from orchestrator.runtime.base import NetworkInfo, Runtime
from orchestrator.runtime.firewall import NETWORK_OPTIONS, FirewallStatus, ensure_host_firewall

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
