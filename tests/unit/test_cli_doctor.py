"""``doctor``: each check with the engine and images faked, plus one run on the real engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli.app import app
from orchestrator.errors import DockerUnavailable
from orchestrator.runtime import engine, firewall, images

TINY_IMAGE = images.ImageStatus(
    ref="ad-sandbox/agent:latest",
    id="sha256:0123456789abcdef0123",
    size_bytes=500 * 1024**2,
    claude_version="2.1.332",
    labels={},
)
RUNSC = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "agents.yaml"
    project = tmp_path / "proj"
    project.mkdir()
    path.write_text(f"agents:\n  infra:\n    directory: {project}\n")
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(path))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no claude unless a test adds one
    return path


@pytest.fixture
def engine_up(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A healthy fake engine; the dict maps image refs to their status."""
    known: dict[str, Any] = {"ad-sandbox/agent:latest": TINY_IMAGE}
    monkeypatch.setattr(engine, "connect", lambda: object())
    monkeypatch.setattr(engine, "engine_version", lambda: "20.10.24")
    monkeypatch.setattr(engine, "security_options", lambda: ["name=seccomp,profile=default"])
    monkeypatch.setattr(engine, "engine_runtimes", lambda: {"runc": {"path": "runc"}, **RUNSC})
    monkeypatch.setattr(images, "image_status", lambda ref: known.get(ref))
    monkeypatch.setattr(firewall, "firewall_status",
                        lambda: firewall.FirewallStatus(True, "AD-SANDBOX-INPUT on ads-agents0"))
    return known


def doctor(*args: str) -> Result:
    return CliRunner().invoke(app, ["doctor", *args])


def rows(result: Result) -> dict[str, dict[str, str]]:
    return {row["check"]: row for row in json.loads(result.stdout)}


def test_all_ok(cfg: Path, engine_up: dict[str, Any]) -> None:
    result = doctor()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    config")
    assert lines[1].split()[:4] == ["ok", "engine", "Docker", "20.10.24"]
    assert "claude 2.1.332" in lines[2] and "500 MB" in lines[2]
    assert lines[3].startswith("ok    agent infra")
    assert lines[4].startswith("warn  registration") and "claude not on PATH" in lines[4]


def test_json(cfg: Path, engine_up: dict[str, Any]) -> None:
    result = doctor("--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [set(row) for row in data] == [{"check", "status", "detail"}] * len(data)
    assert [row["check"] for row in data] == [
        "config", "engine", "image ad-sandbox/agent:latest", "agent infra", "registration",
        "user namespaces", "gVisor (runsc)", "host firewall",
    ]  # fmt: skip


def test_docker_down_exits_4_with_one_line(
    cfg: Path, engine_up: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down() -> object:
        raise DockerUnavailable("Docker engine not reachable (connection refused)")

    monkeypatch.setattr(engine, "connect", down)
    result = doctor()
    assert result.exit_code == 4
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: engine: Docker engine not reachable")
    assert " — " in result.stderr
    data = rows(doctor("--json"))
    assert data["engine"]["status"] == "fail"
    assert data["image ad-sandbox/agent:latest"]["detail"].startswith("not checked")


def test_missing_image_exits_4(cfg: Path, engine_up: dict[str, Any]) -> None:
    engine_up.clear()
    result = doctor()
    assert result.exit_code == 4
    assert "ad-sandbox image build" in result.stderr


def test_agent_images_are_checked_too(cfg: Path, engine_up: dict[str, Any]) -> None:
    cfg.write_text(cfg.read_text() + "    image: me/infra:1\n")
    data = rows(doctor("--json"))
    assert data["image me/infra:1"]["status"] == "fail"


def test_unknown_claude_version_warns(cfg: Path, engine_up: dict[str, Any]) -> None:
    engine_up["ad-sandbox/agent:latest"] = images.ImageStatus(
        ref="ad-sandbox/agent:latest", id="sha256:ab", size_bytes=1, claude_version=None, labels={}
    )
    result = doctor("--json")
    assert result.exit_code == 0
    assert rows(result)["image ad-sandbox/agent:latest"]["status"] == "warn"


def test_broken_config_exits_2(cfg: Path, engine_up: dict[str, Any]) -> None:
    cfg.write_text("agents:\n  infra:\n    directory: /x\n    timeout: -5\n")
    result = doctor()
    assert result.exit_code == 2
    assert "agents.yaml line 4: agents.infra.timeout: -5" in result.stderr


def test_missing_config_warns(
    cfg: Path, engine_up: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "none.yaml"))
    result = doctor("--json")
    assert result.exit_code == 0
    assert "ad-sandbox init" in rows(result)["config"]["detail"]
    strict = doctor("--strict")  # warnings fail under --strict
    assert strict.exit_code == 1
    assert "--strict: config" in strict.stderr


def test_missing_agent_directory_fails(
    cfg: Path, engine_up: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "proj").rmdir()
    result = doctor()
    assert result.exit_code == 2
    assert "missing" in result.stderr and "ad-sandbox update infra" in result.stderr


@pytest.mark.parametrize(("code", "status"), [(0, "ok"), (1, "warn")])
def test_registration_via_claude_mcp_get(
    cfg: Path,
    engine_up: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    status: str,
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    (bindir / "claude").write_text(f'#!/bin/sh\necho "$@" > "{record}"\nexit {code}\n')
    (bindir / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    result = doctor("--json")
    assert result.exit_code == 0
    assert rows(result)["registration"]["status"] == status
    assert record.read_text() == "mcp get ad-sandbox\n"


@pytest.mark.docker
def test_real_engine(cfg: Path) -> None:
    result = doctor("--json")
    data = rows(result)
    assert data["engine"]["status"] == "ok", data["engine"]
    assert data["engine"]["detail"].startswith("Docker ")
    image_rows = [row for name, row in data.items() if name.startswith("image")]
    assert image_rows
    failed = [row for row in image_rows if row["status"] == "fail"]
    for row in failed:
        assert "missing" in row["detail"]
    assert result.exit_code == (4 if failed else 0)


@pytest.mark.parametrize(("options", "status", "words"), [
    (["name=seccomp,profile=default"], "warn", "userns-remap"),
    (["name=seccomp,profile=default", "name=userns"], "ok", "userns-remap on"),
    (["name=rootless", "name=seccomp,profile=default"], "ok", "rootless"),
])  # fmt: skip
def test_user_namespaces_recommended_when_off(
    cfg: Path, engine_up: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    options: list[str], status: str, words: str,
) -> None:
    monkeypatch.setattr(engine, "security_options", lambda: options)
    result = doctor("--json")
    assert result.exit_code == 0  # a warning, never a failure
    row = rows(result)["user namespaces"]
    assert row["status"] == status and words in row["detail"]


@pytest.mark.parametrize(("runtime", "registered", "status", "code"), [
    ("runc", True, "ok", 0),
    ("runsc", True, "ok", 0),
    ("runc", False, "warn", 0),
    ("runsc", False, "fail", 4),
])  # fmt: skip
def test_gvisor_registration(
    cfg: Path, engine_up: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    runtime: str, registered: bool, status: str, code: int,
) -> None:
    cfg.write_text(cfg.read_text() + f"    sandbox: {{runtime: {runtime}}}\n")
    runtimes = {"runc": {"path": "runc"}, **(RUNSC if registered else {})}
    monkeypatch.setattr(engine, "engine_runtimes", lambda: runtimes)
    result = doctor("--json")
    assert result.exit_code == code, result.output
    row = rows(result)["gVisor (runsc)"]
    assert row["status"] == status, row
    if registered:
        assert "/usr/bin/runsc" in row["detail"]
        assert ("used by infra" in row["detail"]) == (runtime == "runsc")
    else:  # how to register it, with the daemon.json entry to merge
        assert '"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}' \
            in row["detail"] and "kill -HUP" in row["detail"]
    if status == "fail":
        assert "runs of infra (sandbox.runtime: runsc) fail" in row["detail"]
        assert doctor().stderr.startswith("error: gVisor (runsc): not registered")
