"""Where a gateway listens: a free port of the range the host firewall lets agents reach.

The host rules (:mod:`orchestrator.runtime.firewall`) are static so a killed orchestrator
leaves nothing open; the price is that every gateway must bind inside
:data:`~orchestrator.runtime.firewall.GATEWAY_PORTS`.
"""

from __future__ import annotations

import errno
import secrets

from starlette.applications import Starlette

from orchestrator.errors import SandboxError
from orchestrator.gateway.server import GatewayServer
from orchestrator.runtime.firewall import GATEWAY_PORTS


def listen_in_range(app: Starlette, host: str, ports: range = GATEWAY_PORTS) -> GatewayServer:
    """Serve ``app`` on ``host`` at the first free port of ``ports``, starting at a random
    one so concurrent processes rarely collide."""
    start = secrets.randbelow(len(ports))
    for port in [*ports[start:], *ports[:start]]:
        try:
            return GatewayServer(app, host=host, port=port).start()
        except SandboxError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE):
                raise
    raise SandboxError(
        f"no free gateway port on {host} in {ports.start}-{ports.stop - 1}",
        hint="Each orchestrator process holds one; stop idle `ad-sandbox serve` processes.",
        host=host,
    )
