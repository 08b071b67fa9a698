"""Helpers for docker tests: a throwaway config + state per test, and the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from orchestrator.run.sandbox import LABEL_AGENT, LABEL_CONFIG, LABEL_MANAGED, config_identity

AD_SANDBOX = str(Path(sys.executable).with_name("ad-sandbox"))


def write_config(home: Path, agents: dict[str, dict[str, Any]], **settings: Any) -> Path:
    data = {
        "settings": {"model_api": {"upstream": "stub", "credential": None},
                     "pool": {"warm_per_agent": 0}, "default_timeout": 120, **settings},
        "agents": agents,
    }
    path = home / "agents.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AD_SANDBOX_CONFIG=str(home / "agents.yaml"),
               AD_SANDBOX_STATE_DIR=str(home / "state"), **extra)
    return env


def run_cli(home: Path, *args: str, timeout: float = 180,
            **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AD_SANDBOX, *args], env=cli_env(home, **extra), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def run_json(home: Path, agent: str, task: str, *args: str) -> tuple[int, dict[str, Any]]:
    done = run_cli(home, "run", agent, "--json", *args, "--", task)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def agent_containers(client: Any, agent: str, home: Path | None = None) -> list[Any]:
    """The containers of ``agent``; of the config in ``home`` only, when given (agent names
    repeat across tests and concurrent sessions; the config identity does not)."""
    labels = [f"{LABEL_MANAGED}=1", f"{LABEL_AGENT}={agent}"]
    if home is not None:
        labels.append(f"{LABEL_CONFIG}={config_identity(home / 'agents.yaml')}")
    found: list[Any] = client.containers.list(all=True, filters={"label": labels})
    return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
