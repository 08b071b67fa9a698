"""The installed ``ad-sandbox`` program starts and lists its commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_help_runs_as_a_real_process() -> None:
    program = Path(sys.executable).parent / "ad-sandbox"
    assert program.exists(), f"{program} missing: install the package (pip install -e .)"
    done = subprocess.run(
        [str(program), "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for command in ("init", "add", "update", "remove", "list", "describe", "doctor", "group"):
        assert command in done.stdout
