"""Issue 10, isolation level: an agent with ``sandbox.runtime: runsc`` runs under gVisor.

Real engine with runsc registered (``scripts/bootstrap.sh`` does it; nothing here skips, so
an engine without it fails these tests with the registration hint), the real claude in the
agent image, the stub model. The task's ``[[bash: CMD]]`` makes claude run CMD inside.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.run.sandbox import LABEL_CONFIG, LABEL_RUN, config_identity
from orchestrator.runtime import engine, gvisor, images
from orchestrator.runtime.base import ContainerSpec, ExecResult
from orchestrator.runtime.docker_runtime import DockerRuntime
from tests.docker.support import (
    AD_SANDBOX,
    agent_containers,
    cli_env,
    run_cli,
    run_json,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

GVISOR_BANNER = "Starting gVisor"
"""What gVisor's own kernel log (``dmesg`` inside) begins with; runc has no such line."""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "README.md").write_text("# the project\n")
    return folder


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(autouse=True)
def runsc_registered() -> None:
    if not gvisor.runsc_registered(engine.engine_runtimes()):
        pytest.fail(f"runsc is not registered with the engine: {gvisor.REGISTER_HINT}",
                    pytrace=False)


@pytest.fixture(autouse=True)
def no_leftovers(client: docker.DockerClient, home: Path) -> Iterator[None]:
    yield
    scope = config_identity(home / "agents.yaml")
    leftovers = client.containers.list(all=True, filters={"label": f"{LABEL_CONFIG}={scope}"})
    for container in leftovers:
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": f"{LABEL_CONFIG}={scope}"}):
        volume.remove(force=True)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


class HostListener:
    """A TCP server on 0.0.0.0 of the host that records whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(4)
        self.sock.settimeout(0)
        self.port: int = self.sock.getsockname()[1]

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


def _start(home: Path, agent: str, task: str) -> subprocess.Popen[str]:
    return subprocess.Popen([AD_SANDBOX, "run", agent, "--json", "--", task],
                            env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def _run_watching_runtime(home: Path, client: docker.DockerClient, agent: str,
                          task: str) -> tuple[dict[str, Any], str, float]:
    """Run ``task`` (which must last a few seconds) and read the OCI runtime of the run's
    container while it exists; returns the result, the runtime and the run's wall time."""
    started = time.monotonic()
    proc = _start(home, agent, task)
    try:
        def runtime() -> str | None:
            for container in agent_containers(client, agent, home):
                if container.labels.get(LABEL_RUN):  # not the session volume's helper
                    return str(container.attrs["HostConfig"]["Runtime"])
            return None

        seen = wait_for(runtime, 120, f"the container of {agent}")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, (stdout, stderr)
    return json.loads(stdout), seen, elapsed


def test_a_runsc_agent_answers_from_inside_gvisor(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    suffix = uuid.uuid4().hex[:8]
    gv, rc = f"gv{suffix}", f"rc{suffix}"
    write_config(home, {gv: {"directory": str(project), "sandbox": {"runtime": "runsc"}},
                        rc: {"directory": str(project)}},
                 cache={"enabled": False})
    probe = ("[[bash: dmesg 2>&1 | head -n1; uname -r; cat /workspace/README.md; "
             "sleep 3; echo DONE]]")
    timings = {}
    for agent, runtime in ((gv, "runsc"), (rc, "runc")):
        result, seen, timings[runtime] = _run_watching_runtime(home, client, agent, probe)
        assert result["success"], result
        text = str(result["result"])
        assert "# the project" in text and "DONE" in text, text  # the answer came back
        assert seen == runtime
        assert (GVISOR_BANNER in text) == (runtime == "runsc"), text
    print(f"cold run with a 3 s task: runsc {timings['runsc']:.1f} s, "
          f"runc {timings['runc']:.1f} s")


def test_the_host_firewall_holds_under_gvisor(home: Path, project: Path) -> None:
    """runsc runs with --network=host: gVisor uses the network namespace Docker made for the
    container, so the run is on the agents network like any other and only the gateway
    answers it; a host service on another port does not."""
    agent = f"gvnet{uuid.uuid4().hex[:8]}"
    write_config(home, {agent: {"directory": str(project), "sandbox": {"runtime": "runsc"}}})
    listener = HostListener()
    try:
        gateway = 'gw=${ANTHROPIC_BASE_URL#http://}; gw=${gw%%:*}'
        probe = (f"if timeout 4 bash -c 'exec 3<>/dev/tcp/'$gw'/{listener.port}' 2>/dev/null; "
                 "then echo OPEN; else echo SHUT; fi")
        done = subprocess.run([AD_SANDBOX, "run", agent, "--json", "--",
                               f"[[bash: {gateway}; dmesg | head -n1; {probe}]]"],
                              env=cli_env(home), capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0, (done.stdout, done.stderr)  # the gateway answered
        text = str(json.loads(done.stdout)["result"])
        assert GVISOR_BANNER in text, text
        assert "SHUT" in text and "OPEN" not in text, text
        assert not listener.connected()
    finally:
        listener.close()


def test_a_warm_runsc_container_serves_the_run(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    agent = f"gvwarm{uuid.uuid4().hex[:8]}"
    write_config(home, {agent: {"directory": str(project), "sandbox": {"runtime": "runsc"}}},
                 pool={"warm_per_agent": 1})
    try:
        up = run_cli(home, "up", "--wait", agent)
        assert up.returncode == 0, (up.stdout, up.stderr)
        warm = [c for c in agent_containers(client, agent, home) if c.status == "running"]
        assert len(warm) == 1, warm
        assert warm[0].attrs["HostConfig"]["Runtime"] == "runsc"
        code, result = run_json(home, agent, "[[bash: dmesg | head -n1]]")
        assert code == 0, result
        assert result["container_id"] == warm[0].id
        assert GVISOR_BANNER in str(result["result"]), result
    finally:
        down = run_cli(home, "down")
        assert down.returncode == 0, (down.stdout, down.stderr)


def _spec(runtime: str, **overrides: Any) -> ContainerSpec:
    return ContainerSpec(
        name=f"adsx-runsc-{uuid.uuid4().hex[:8]}", image=images.agent_ref(), user="1000:1000",
        workdir="/tmp", env={}, labels={"ad-sandbox.test": "runsc"}, mounts=(),
        tmpfs={"/tmp": "size=16m,mode=1777"}, network="none", cpus=1.0,
        memory_bytes=128 * 1024**2, pids_limit=64, runtime=runtime, **overrides)


def _exec_with_deadline(runtime: DockerRuntime, cid: str, argv: list[str],
                        deadline: float) -> tuple[ExecResult, float]:
    """``exec`` in a thread; fails the test when it has not returned within ``deadline``."""
    box: list[ExecResult] = []

    def target() -> None:
        box.append(runtime.exec(cid, argv, env={}, user="1000:1000", workdir="/tmp",
                                stdin_file=None, on_stdout_line=lambda _: None,
                                on_stderr=lambda _: None))

    started = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(deadline)
    assert box, f"exec still streaming {deadline}s after its container died"
    return box[0], time.monotonic() - started


def test_a_killed_gvisor_container_ends_its_exec() -> None:
    """The engine leaves the stream of a runsc container's exec open after `docker kill`;
    the runtime must end it, or a timed-out run's thread waits forever."""
    runtime = DockerRuntime()
    cid = runtime.create(_spec("runsc"))
    try:
        threading.Timer(2.0, runtime.kill, args=(cid,)).start()
        result, took = _exec_with_deadline(runtime, cid, ["sleep", "120"], 30)
        assert took < 15, took
        assert not result.oom_killed
    finally:
        runtime.remove(cid)


def test_a_gvisor_sandbox_over_its_memory_limit_is_an_oom() -> None:
    """gVisor's memory is charged to the sandbox, so the limit kills it as a whole; the exec
    must then end at once and say OOM (not wait for the run's timeout)."""
    runtime = DockerRuntime()
    cid = runtime.create(_spec("runsc"))
    try:
        grow = "x = []\nwhile True: x.append(bytearray(16 * 1024 * 1024))"
        result, took = _exec_with_deadline(runtime, cid, ["python3", "-c", grow], 60)
        assert result.oom_killed, result
        assert took < 30, took
    finally:
        runtime.remove(cid)


def test_an_oom_run_under_gvisor_ends_as_oom(home: Path, project: Path) -> None:
    agent = f"gvoom{uuid.uuid4().hex[:8]}"
    write_config(home, {agent: {"directory": str(project), "sandbox": {"runtime": "runsc"},
                                "resources": {"memory": "512m"}}},
                 default_timeout=90)
    grow = 'python3 -c "x = []\nwhile True: x.append(bytearray(16 * 1024 * 1024))"'
    started = time.monotonic()
    done = run_cli(home, "run", agent, "--json", "--", f"[[bash: {grow}]]", timeout=120)
    result = json.loads(done.stdout)
    assert result["exit_reason"] == "oom", result
    assert time.monotonic() - started < 60  # not the 90 s timeout, and the CLI exited
