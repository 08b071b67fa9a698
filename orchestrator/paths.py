"""Where ad-sandbox keeps its configuration and state."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "AD_SANDBOX_CONFIG"
STATE_ENV = "AD_SANDBOX_STATE_DIR"


def config_path() -> Path:
    """The agents file: ``$AD_SANDBOX_CONFIG`` or ``~/.config/ad-sandbox/agents.yaml``."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ad-sandbox" / "agents.yaml"


def state_dir() -> Path:
    """The state folder: ``$AD_SANDBOX_STATE_DIR`` or ``~/.local/state/ad-sandbox``."""
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ad-sandbox"
