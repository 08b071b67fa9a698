"""Test-only entry: the real MCP server over FakeDispatcher, on stdio or HTTP.

    python -m tests.fake_serve [--transport stdio|http] [--host H] [--port P] [--management]

Independent MCP clients (Inspector, conformance) drive it so the MCP layer is checked
end to end without Docker. An HTTP bearer token is read from AD_SANDBOX_MCP_TOKEN.
"""

from __future__ import annotations

import argparse
import os

from orchestrator.server import create_server, run
from tests.fakes import FakeDispatcher, fake_factory


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_serve")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--management", action="store_true", help="expose add/update/remove")
    args = parser.parse_args()
    fake = FakeDispatcher(management_tools=args.management)
    run(
        create_server(fake_factory(fake)),
        transport=args.transport,
        host=args.host,
        port=args.port,
        token=os.environ.get("AD_SANDBOX_MCP_TOKEN") or None,
    )


if __name__ == "__main__":
    main()
