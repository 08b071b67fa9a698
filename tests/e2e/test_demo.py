"""README's first quick-start command runs `ad-sandbox demo`: keep it true."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest

from tests.e2e.test_mcp_clients import AD_SANDBOX

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]


def test_demo_runs_end_to_end_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env.update(AD_SANDBOX_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path))
    done = subprocess.run([AD_SANDBOX, "demo"], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "model: the offline stub" in out
    assert "tool result: 6 * 7 = 42" in out                  # a run in a sandbox
    assert "tool result: 12 * 12 = 144" in out                # the same through MCP
    assert "… calc: running" in out                            # with progress
    assert "cached: True, $0.0000" in out                      # the second one from cache
    assert "calc → 'tool result: 3 * 5 = 15'" in out          # and a parallel fan-out
    assert "the MCP calls all succeeded" in out
    assert not (tmp_path / ".config").exists()  # the user's config was never touched
    # Nothing left running: a warm pool refilled as the server stopped is removed too.
    engine = docker.from_env()
    try:
        mine = [c.name for c in engine.containers.list(
            all=True, filters={"label": "ad-sandbox.managed=1"})
            if any(str(m.get("Source", "")).startswith(str(tmp_path))
                   for m in c.attrs.get("Mounts") or [])]
    finally:
        engine.close()
    assert mine == [], mine
