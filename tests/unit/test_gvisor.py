"""gVisor as an isolation level: registering runsc in daemon.json, the config field, and a
run that asks for runsc on an engine with and without it (fake runtime)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.config import Agent, Config, ModelApi, Pool, Settings
from orchestrator.configfile import load_config, save_config
from orchestrator.dispatch.dispatcher import open_dispatcher
from orchestrator.errors import ConfigError, ContainerFailed
from orchestrator.models import RunRequest
from orchestrator.results import DispatchResult
from orchestrator.run.pool import WarmPool
from orchestrator.run.sandbox import Owner
from orchestrator.runtime import exec_streams, gvisor
from orchestrator.runtime.exec_streams import StreamRegistry
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.state import StateStore
from tests.fake_claude import fake_claude

ENTRY = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}


# -- daemon.json ---------------------------------------------------------------------------


def test_register_creates_the_file_when_absent(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "docker" / "daemon.json"
    assert gvisor.register_runsc(target)
    assert json.loads(target.read_text()) == {"runtimes": {"runsc": ENTRY}}
    assert target.stat().st_mode & 0o777 == 0o644


def test_register_keeps_every_other_key_and_runtime(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    before: dict[str, Any] = {
        "log-driver": "json-file",
        "userns-remap": "default",
        "default-address-pools": [{"base": "10.99.0.0/16", "size": 24}],
        "runtimes": {"kata": {"path": "/opt/kata/bin/kata-runtime"}},
    }
    target.write_text(json.dumps(before))
    target.chmod(0o600)
    assert gvisor.register_runsc(target)
    after = json.loads(target.read_text())
    assert after == {**before, "runtimes": {"kata": before["runtimes"]["kata"], "runsc": ENTRY}}
    assert target.stat().st_mode & 0o777 == 0o600  # the file's mode is kept too
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]  # no temporary left


def test_register_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    target.write_text('{"debug": true}')
    assert gvisor.register_runsc(target)
    written = target.read_text()
    stamp = target.stat().st_mtime_ns
    assert not gvisor.register_runsc(target)
    assert not gvisor.register_runsc(target)
    assert target.read_text() == written and target.stat().st_mtime_ns == stamp


def test_an_existing_runsc_entry_is_kept_with_host_networking_added(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    mine = {"path": "/opt/gvisor/runsc", "runtimeArgs": ["--platform=kvm"]}
    target.write_text(json.dumps({"runtimes": {"runsc": mine}}))
    assert gvisor.register_runsc(target)
    entry = json.loads(target.read_text())["runtimes"]["runsc"]
    assert entry == {"path": "/opt/gvisor/runsc",
                     "runtimeArgs": ["--platform=kvm", "--network=host"]}
    assert not gvisor.register_runsc(target)


def test_an_explicit_network_choice_is_not_overridden(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    mine = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=sandbox"]}
    target.write_text(json.dumps({"runtimes": {"runsc": mine}}))
    assert not gvisor.register_runsc(target)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"runtimes": []}',
                                  '{"runtimes": {"runsc": "/usr/bin/runsc"}}'])
def test_a_file_that_cannot_be_merged_is_left_untouched(tmp_path: Path, text: str) -> None:
    target = tmp_path / "daemon.json"
    target.write_text(text)
    with pytest.raises(ValueError):
        gvisor.register_runsc(target)
    assert target.read_text() == text


def test_an_empty_file_counts_as_no_settings(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    target.write_text("\n")
    assert gvisor.register_runsc(target)
    assert json.loads(target.read_text()) == {"runtimes": {"runsc": ENTRY}}


def test_runsc_registered_reads_the_engines_runtimes() -> None:
    assert gvisor.runsc_registered({"runc": {"path": "runc"}, "runsc": ENTRY})
    assert not gvisor.runsc_registered({"runc": {"path": "runc"}})
    assert not gvisor.runsc_registered({})


def test_reload_signals_only_a_dockerd(tmp_path: Path) -> None:
    pidfile = tmp_path / "docker.pid"
    assert not gvisor.reload_engine(pidfile)  # no pid file
    pidfile.write_text("not a pid\n")
    assert not gvisor.reload_engine(pidfile)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{sleeper.pid}\n")  # a stale pid file naming another process
        assert not gvisor.reload_engine(pidfile)
        assert sleeper.poll() is None  # not signalled (SIGHUP would have ended it)
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()


def test_register_command_refuses_a_missing_binary(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.runtime.gvisor", "register", "--daemon-json",
         str(target), "--runsc", str(tmp_path / "runsc")],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "apt-get install runsc" in done.stderr
    assert not target.exists()


# -- config --------------------------------------------------------------------------------


def test_runtime_defaults_to_runc_and_accepts_runsc(tmp_path: Path) -> None:
    assert Agent(directory=str(tmp_path)).sandbox.runtime == "runc"
    agent = Agent(directory=str(tmp_path), sandbox={"runtime": "runsc"})  # type: ignore[arg-type]
    assert agent.sandbox.runtime == "runsc"


@pytest.mark.parametrize("value", ["kata", "RUNSC", "", "1"])
def test_other_runtimes_are_refused_at_load(tmp_path: Path, value: str) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(f"agents:\n  a:\n    directory: {tmp_path}\n    sandbox:\n"
                    f"      runtime: '{value}'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "agents.a.sandbox.runtime" in info.value.message
    assert "use runc (the default) or runsc (gVisor)" in info.value.message


def test_unknown_sandbox_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(f"agents:\n  a:\n    directory: {tmp_path}\n    sandbox:\n"
                    "      runtme: runsc\n")
    with pytest.raises(ConfigError, match="runtme"):
        load_config(path)


# -- runs ----------------------------------------------------------------------------------


def _pool(tmp_path: Path, runtime: FakeRuntime) -> WarmPool:
    runtime.ensure_network("n", internal=True, labels={})
    return WarmPool(runtime=runtime, state=StateStore(tmp_path / "state.db"), network="n",
                    scope="s")


def _agent(tmp_path: Path, runtime: str) -> Agent:
    return Agent(directory=str(tmp_path), sandbox={"runtime": runtime})  # type: ignore[arg-type]


def _created_runtimes(runtime: FakeRuntime) -> list[Any]:
    return [call[1][0].runtime for call in runtime.calls if call[0] == "create"]


def test_a_runsc_agent_on_an_engine_without_runsc_fails_with_the_hint(tmp_path: Path) -> None:
    runtime = FakeRuntime()  # knows runc only
    pool = _pool(tmp_path, runtime)
    agent, owner = _agent(tmp_path, "runsc"), Owner(1000, 1000)
    with pytest.raises(ContainerFailed) as info:
        anyio.run(lambda: pool.acquire("g", agent, "img", owner, "run-1", lease_s=60))
    error = info.value
    assert error.message == "runtime runsc is not registered with the Docker engine"
    assert error.error_type == "sandbox" and error.exit_code == 4
    assert gvisor.SNIPPET in error.hint and "kill -HUP" in error.hint
    assert "scripts/bootstrap.sh" in error.hint
    assert runtime.list_managed() == []  # nothing left behind


def test_a_runsc_agent_gets_a_runsc_container(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.runtimes.add("runsc")
    pool = _pool(tmp_path, runtime)
    owner = Owner(1000, 1000)

    async def main() -> None:
        for name in ("runc", "runsc"):
            await pool.acquire(name, _agent(tmp_path, name), "img", owner, f"run-{name}",
                               lease_s=60)

    anyio.run(main)
    assert _created_runtimes(runtime) == ["runc", "runsc"]


def test_a_warm_container_of_the_other_runtime_is_never_claimed(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.runtimes.add("runsc")
    pool = _pool(tmp_path, runtime)
    owner = Owner(1000, 1000)
    runc, runsc = _agent(tmp_path, "runc"), _agent(tmp_path, "runsc")

    async def main() -> tuple[list[str], str, str]:
        warm = await pool.fill("a", runc, "img", owner, 1)
        # The agent was switched to runsc since the warm container started.
        switched = await pool.acquire("a", runsc, "img", owner, "run-1", lease_s=60)
        same = await pool.acquire("a", runc, "img", owner, "run-2", lease_s=60)
        return warm, switched, same

    warm, switched, same = anyio.run(main)
    assert switched not in warm and same in warm
    assert _created_runtimes(runtime) == ["runc", "runsc"]


def test_a_run_of_a_runsc_agent_without_runsc_ends_with_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    save_config(Config(
        settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                          pool=Pool(warm_per_agent=0)),
        agents={"g": _agent(project, "runsc"), "c": _agent(project, "runc")},
    ), tmp_path / "agents.yaml")
    runtime = FakeRuntime()  # knows runc only
    runtime.on_command("bash", fake_claude)

    async def main() -> list[DispatchResult]:
        async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                                   image_id=lambda ref: "sha256:fake") as service:
            return [await service.dispatch(RunRequest(agent=name, task="hi"))
                    for name in ("g", "c")]

    refused, served = anyio.run(main)
    assert not refused.success and refused.error_type == "sandbox"
    assert refused.error == "runtime runsc is not registered with the Docker engine"
    assert refused.hint is not None and gvisor.SNIPPET in refused.hint
    assert served.success, served  # a runc agent of the same config is not affected


# -- exec streams (ended with their container: gVisor does not end them) -------------------


def test_abort_shuts_a_tracked_stream_before_or_after_it_attaches() -> None:
    registry = StreamRegistry()
    for abort_first in (False, True):
        ours, theirs = socket.socketpair()
        with ours, theirs, registry.track("c1") as stream:
            if abort_first:
                registry.abort("c1")
                stream.attach(ours)
            else:
                stream.attach(ours)
                registry.abort("c1")
            assert stream.aborted
            assert ours.recv(1) == b""  # the reader sees the end of the stream
    registry.abort("c1")  # nothing tracked any more: a no-op


def test_abort_ends_only_that_containers_streams() -> None:
    registry = StreamRegistry()
    ours, theirs = socket.socketpair()
    with ours, theirs, registry.track("c1") as stream:
        stream.attach(ours)
        registry.abort("c2")
        assert not stream.aborted
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"


def test_the_watcher_aborts_when_the_container_stops_running(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exec_streams, "WATCH_INTERVAL_S", 0.05)
    running = threading.Event()
    running.set()
    ours, theirs = socket.socketpair()
    with ours, theirs, StreamRegistry().track("c1", running.is_set) as stream:
        stream.attach(ours)
        time.sleep(0.2)
        assert not stream.aborted
        running.clear()  # the container died on its own (an OOM of the whole sandbox)
        ours.settimeout(5)
        assert ours.recv(1) == b""
        assert stream.aborted
