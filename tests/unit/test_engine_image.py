"""The engine image's package list (compose/compose.dind.yaml): what apt's simulation
against the orchestrator image's dpkg status says docker.io adds, as ``name=version``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import SandboxError
from orchestrator.runtime import engine_image

SIMULATION = """\
NOTE: This is only a simulation!
Reading package lists...
The following NEW packages will be installed:
  containerd docker.io runc
Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.11/stable [amd64])
Inst libip4tc2 [1.8.8-1] (1.8.9-2 Debian:12.11/stable [amd64])
Inst containerd (1.6.20~ds1-1+b1 Debian:12.11/stable [amd64])
Inst docker.io (20.10.24+dfsg1-1+deb12u1+b1 Debian:12.11/stable [amd64])
Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.11/stable [amd64])
"""


def fake_apt(stdout: str, code: int = 0, stderr: str = "") -> Any:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["apt-get", "install", "-s"]
        assert "--no-install-recommends" in argv and argv[-1] == "docker.io"
        assert any(a.startswith("Dir::State::status=") for a in argv)
        return subprocess.CompletedProcess(argv, code, stdout, stderr)
    return run


def test_resolve_packages_reads_the_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_image.subprocess, "run", fake_apt(SIMULATION))
    assert engine_image.resolve_packages(Path("status")) == [
        "containerd=1.6.20~ds1-1+b1", "docker.io=20.10.24+dfsg1-1+deb12u1+b1",
        "libip4tc2=1.8.9-2", "runc=1.1.5+ds1-1+deb12u1"]


def test_resolve_packages_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_image.subprocess, "run",
                        fake_apt("", 100, "E: Unable to locate package docker.io\n"))
    with pytest.raises(SandboxError, match=r"Unable to locate package docker\.io"):
        engine_image.resolve_packages(Path("status"))
