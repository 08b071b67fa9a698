"""Host file read through the catalog: the agent points its project files at host files.

A run makes ``CLAUDE.md``, ``README.md``, ``README``, ``.mcp.json`` and ``package.json``
symlinks to a canary file outside the project (and to ``/etc/shadow``). Neither
``ad-sandbox describe`` nor the MCP ``inspect_agent`` may return the canary, and the next
run must not get it either through the ``--mcp-config`` the host writes into its container.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client, StdioServerParameters

from orchestrator.run.sandbox import LABEL_AGENT, LABEL_MANAGED
from tests.docker.support import AD_SANDBOX, cli_env, run_cli, run_json, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AGENT_UID = 4321
DEADLINE = 120.0


@pytest.fixture
def name(client: docker.DockerClient) -> Iterator[str]:
    """A unique agent name (engine objects are named after it); its objects removed after."""
    agent = f"cat-{uuid.uuid4().hex[:8]}"
    yield agent
    label = {"label": [f"{LABEL_MANAGED}=1", f"{LABEL_AGENT}={agent}"]}
    for container in client.containers.list(all=True, filters=label):
        container.remove(force=True)
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)


def inspect_over_mcp(home: Path, agent: str) -> dict[str, Any]:
    """``inspect_agent`` through a real MCP client and the real ``ad-sandbox serve``."""

    async def main() -> dict[str, Any]:
        server = StdioServerParameters(command=AD_SANDBOX, args=["serve"], env=cli_env(home))
        with anyio.fail_after(DEADLINE):
            async with Client(server) as client:
                result = await client.call_tool("inspect_agent",
                                                {"name": agent, "preview_lines": 200})
        assert not result.is_error, result.content
        if result.structured_content is not None:
            return dict(result.structured_content)
        return dict(json.loads(result.content[0].text))  # type: ignore[union-attr]

    return anyio.run(main)


def test_project_symlinks_to_host_files_are_not_followed(
    home: Path, project: Path, tmp_path: Path, name: str
) -> None:
    for path in (project, project / "README.md"):
        os.chown(path, AGENT_UID, AGENT_UID)  # the agent runs as the project's owner
    secret = f"CANARY-{uuid.uuid4().hex}"
    canary = tmp_path / "canary.txt"
    canary.write_text(f"{secret}\n")
    canary_json = tmp_path / "canary.json"
    canary_json.write_text(json.dumps({"mcpServers": {secret: {"command": "true",
                                                               "args": [secret]}}}))
    shadow = Path("/etc/shadow").read_text().splitlines()[0]
    write_config(home, {name: {"directory": str(project)}})

    links = (f"ln -sfn {canary} CLAUDE.md && ln -sfn /etc/shadow README.md && "
             f"ln -sfn {canary} README && ln -sfn {canary_json} .mcp.json && "
             f"ln -sfn {canary} package.json")
    code, made = run_json(home, name, f"[[bash: cd /workspace && {links} && echo LINKED]]")
    assert code == 0 and "LINKED" in made["result"], made
    assert (project / "CLAUDE.md").is_symlink() and (project / ".mcp.json").is_symlink()

    described = run_cli(home, "describe", name, "--json")
    assert described.returncode == 0, described.stderr
    assert secret not in described.stdout and shadow not in described.stdout

    detail = inspect_over_mcp(home, name)
    shown = json.dumps(detail)
    assert secret not in shown and shadow not in shown, detail["preview"]
    assert "node" not in detail["stacks"]  # a symlinked marker is not the project's

    # The host reads .mcp.json to build the run's --mcp-config: not through a symlink.
    done = run_cli(home, "run", name, "--json", "--",
                   "[[bash: cat /run/ad-sandbox/mcp.json; echo END]]")
    assert secret not in done.stdout + done.stderr, done.stdout
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert ".mcp.json" in done.stdout and "symlink" in done.stdout, done.stdout
