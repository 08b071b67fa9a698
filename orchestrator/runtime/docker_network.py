"""The agents' bridge network on a real engine: created with the options isolation needs.

A network made by an older release lacks those options (the engine cannot change them in
place), so it is recreated with the same subnet when no container is attached, and refused
with a hint when one is: removing it would cut those runs off their gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from docker import APIClient
from docker.types import IPAMConfig, IPAMPool

from orchestrator.errors import ContainerFailed, SandboxError
from orchestrator.runtime.base import NetworkInfo
from orchestrator.runtime.docker_calls import Gone, call

log = logging.getLogger(__name__)


def ensure_network(api: APIClient, name: str, *, internal: bool, labels: dict[str, str],
                   options: Mapping[str, str]) -> NetworkInfo:
    """The network ``name``, created (or recreated) with ``internal`` and ``options``."""
    try:
        attrs = _inspect(api, name)
    except Gone:
        attrs = _create(api, name, internal=internal, labels=labels, options=options)
    info = network_info(attrs)
    if info.internal != internal:
        raise SandboxError(
            f"network {name} exists with internal={info.internal}, wanted {internal}",
            hint=f"Remove it (`docker network rm {name}`) and try again.",
            network=name,
        )
    stale = missing_options(attrs, options)
    if stale:
        attrs = _recreate(api, attrs, labels=labels, options=options, stale=stale)
        info = network_info(attrs)
    return info


def missing_options(attrs: dict[str, Any], options: Mapping[str, str]) -> dict[str, str]:
    """The wanted driver options the existing network does not have (key → wanted value)."""
    have = attrs.get("Options") or {}
    return {key: value for key, value in options.items() if have.get(key) != value}


def network_info(attrs: dict[str, Any]) -> NetworkInfo:
    configs = (attrs.get("IPAM") or {}).get("Config") or [{}]
    gateway = next((c["Gateway"] for c in configs if c.get("Gateway")), "")
    subnet = next((c["Subnet"] for c in configs if "." in c.get("Subnet", "")), "")
    return NetworkInfo(name=str(attrs["Name"]), gateway_ip=str(gateway),
                       internal=bool(attrs.get("Internal")), subnet=str(subnet))


def _inspect(api: APIClient, name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = call("inspect network", partial(api.inspect_network, name))
    return attrs


def _create(api: APIClient, name: str, *, internal: bool, labels: dict[str, str],
            options: Mapping[str, str], ipam: IPAMConfig | None = None) -> dict[str, Any]:
    create = partial(api.create_network, name, driver="bridge", internal=internal,
                     labels=labels, options=dict(options), ipam=ipam, check_duplicate=True)
    try:
        call("create network", create)
    except ContainerFailed as exc:
        # Another process may have created it in the meantime; that is fine.
        if exc.data.get("status") != 409:
            raise
    return _inspect(api, name)


def _recreate(api: APIClient, attrs: dict[str, Any], *, labels: dict[str, str],
              options: Mapping[str, str], stale: dict[str, str]) -> dict[str, Any]:
    name = str(attrs["Name"])
    attached = sorted((attrs.get("Containers") or {}).keys())
    wanted = ", ".join(f"{k}={v}" for k, v in stale.items())
    if attached:
        raise SandboxError(
            f"network {name} was created without {wanted}, and {len(attached)} container(s) "
            "still use it",
            hint="Let those runs finish (or `ad-sandbox down`), then try again: the network "
            "is recreated with the isolation options when nothing uses it.",
            network=name, containers=[c[:12] for c in attached],
        )
    log.warning("recreating network %s: it lacks %s", name, wanted)
    try:
        call("remove network", partial(api.remove_network, str(attrs["Id"])))
    except Gone:
        pass  # another process is recreating it too
    except ContainerFailed as exc:  # a container joined since the inspect
        raise SandboxError(
            f"network {name} could not be recreated with {wanted}: {exc.message}",
            hint="Let the runs using it finish, then try again.", network=name,
        ) from exc
    created = _create(api, name, internal=bool(attrs.get("Internal")), labels=labels,
                      options=options, ipam=_same_subnet(attrs))
    if missing_options(created, options):
        raise SandboxError(
            f"network {name} still lacks {wanted} after recreating it",
            hint=f"Remove it (`docker network rm {name}`) and try again.", network=name,
        )
    return created


def _same_subnet(attrs: dict[str, Any]) -> IPAMConfig | None:
    """The old subnet and gateway, so gateways already bound to that address keep working."""
    pools = [IPAMPool(subnet=c["Subnet"], gateway=c.get("Gateway"))
             for c in (attrs.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
    return IPAMConfig(pool_configs=pools) if pools else None
