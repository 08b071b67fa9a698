"""Test-only entry: the real MCP server over the real Service on the fake runtime.

    python -m tests.fake_serve [--transport stdio|http] [--host H] [--port P] [--management]

Independent MCP clients (Inspector, conformance) drive it so the MCP layer and the service
are checked end to end without Docker: the home is tests/servicekit.py's (agents alpha and
beta, the stub model), written to a temporary directory removed on exit. An HTTP bearer
token is read from AD_SANDBOX_MCP_TOKEN.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from orchestrator.server import create_server, run
from tests.servicekit import kit_factory, write_home


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_serve")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--management", action="store_true", help="expose add/update/remove")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ad-sandbox-fake-serve-") as root:
        os.environ.update(write_home(Path(root), management=args.management))
        run(
            create_server(kit_factory()),
            transport=args.transport,
            host=args.host,
            port=args.port,
            token=os.environ.get("AD_SANDBOX_MCP_TOKEN") or None,
        )


if __name__ == "__main__":
    main()
