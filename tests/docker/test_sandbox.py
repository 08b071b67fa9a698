"""Issue 3's proofs, against the real engine, the real claude 2.1.332 and the stub model.

Each test drives `ad-sandbox` the way a user does (the CLI in a subprocess) or the
dispatcher in-process over the real Docker runtime.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from orchestrator.privilege import UNPRIVILEGED_ID
from orchestrator.run.sandbox import CONFIG_DIR, LABEL_CONFIG, SESSIONS_DIR, config_identity
from orchestrator.state import StateStore
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

MCP_SERVER = r'''
import json, sys

def reply(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    msg = json.loads(line)
    method, msg_id = msg.get("method"), msg.get("id")
    if method == "initialize":
        reply(msg_id, {"protocolVersion": msg["params"]["protocolVersion"],
                       "capabilities": {"tools": {}},
                       "serverInfo": {"name": "calc", "version": "1"}})
    elif method == "tools/list":
        reply(msg_id, {"tools": [{"name": "add", "description": "Add two integers",
                                  "inputSchema": {"type": "object",
                                                  "properties": {"a": {"type": "integer"},
                                                                 "b": {"type": "integer"}},
                                                  "required": ["a", "b"]}}]})
    elif method == "tools/call":
        args = msg["params"]["arguments"]
        text = f"sum from the project server: {args['a'] + args['b']}"
        reply(msg_id, {"content": [{"type": "text", "text": text}]})
    elif msg_id is not None:
        reply(msg_id, {})
'''


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
    engine = docker.from_env()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(autouse=True)
def no_leftovers(client: docker.DockerClient, home: Path) -> Any:
    yield
    leftovers = [c for c in agent_containers(client, "proj", home)]
    for container in leftovers:
        container.remove(force=True)
    # Session volumes are per config (this test's home): nothing of an earlier test is reused.
    scope = config_identity(home / "agents.yaml")
    for volume in client.volumes.list(filters={"label": f"{LABEL_CONFIG}={scope}"}):
        volume.remove(force=True)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


def test_a_run_sees_only_its_project_with_limits_in_force(home: Path, project: Path) -> None:
    os.chown(project, 4321, 4321)
    os.chown(project / "README.md", 4321, 4321)
    write_config(home, {"proj": {"directory": str(project),
                                 "resources": {"memory": "1g", "pids": 300}}})
    probe = ("ls -A /workspace; id -u; id -g; touch /probe 2>/dev/null || echo ROOT-RO; "
             "grep CapEff /proc/self/status; "
             "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; "
             "echo MOUNTS; awk '{print $5}' /proc/self/mountinfo | sort -u; "
             "ls /var/run/docker.sock 2>&1 | grep -c 'No such' ; echo > /workspace/made")
    code, result = run_json(home, "proj", f"[[bash: {probe}]]")
    assert code == 0, result
    out = result["result"]
    lines = out.removeprefix("tool result: ").splitlines()
    assert lines[:3] == ["README.md", "4321", "4321"]
    assert "ROOT-RO" in lines and "CapEff:\t0000000000000000" in lines
    assert "1073741824" in lines and "300" in lines
    mounts = set(lines[lines.index("MOUNTS") + 1:-1])
    host_visible = {m for m in mounts if not m.startswith(("/proc", "/dev", "/sys"))}
    assert host_visible <= {"/", "/workspace", "/tmp", "/run/secrets", "/run/ad-sandbox",
                            CONFIG_DIR, SESSIONS_DIR, "/etc/hosts", "/etc/hostname",
                            "/etc/resolv.conf", "/sbin/docker-init",
                            "/usr/sbin/docker-init"}, host_visible
    assert lines[-1] == "1"  # no Docker socket
    assert (project / "made").stat().st_uid == 4321  # files it writes belong to the owner


def test_timeout_kills_the_container_within_the_deadline(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    write_config(home, {"proj": {"directory": str(project)}})
    code, result = run_json(home, "proj", "[[sleep: 600]] never", "--timeout", "5")
    returned = time.time()
    assert code == 3
    assert result["exit_reason"] == "timeout" and result["error_type"] == "timeout"
    with pytest.raises(docker.errors.NotFound):  # gone before the CLI returned
        client.containers.get(result["container_id"])
    with StateStore(home / "state" / "state.db") as state:
        started = state.get_run(result["run_id"]).started_at
    assert started is not None
    assert returned - started < 7, f"container gone {returned - started:.1f}s after the start"


def test_memory_past_the_limit_ends_oom(home: Path, project: Path) -> None:
    write_config(home, {"proj": {"directory": str(project), "resources": {"memory": "600m"}}})
    hog = "python3 -c 'b = bytearray(3 * 1024**3); print(len(b))'"
    code, result = run_json(home, "proj", f"[[bash: {hog}]]")
    assert result["exit_reason"] == "oom", result
    assert result["error_type"] == "oom" and code == 4


def test_project_mcp_server_runs_inside_the_container(home: Path, project: Path) -> None:
    (project / "calc_server.py").write_text(MCP_SERVER)
    (project / ".mcp.json").write_text(json.dumps(
        {"mcpServers": {"calc": {"command": "python3", "args": ["calc_server.py"]}}}))
    write_config(home, {"proj": {"directory": str(project)}})
    code, result = run_json(home, "proj", '[[tool: mcp__calc__add {"a": 2, "b": 40}]]')
    assert code == 0, result
    assert result["result"] == "tool result: sum from the project server: 42"


def test_kill_9_of_the_orchestrator_then_a_new_one_reaps(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    write_config(home, {"proj": {"directory": str(project)}})
    victim = subprocess.Popen(
        [AD_SANDBOX, "run", "proj", "--quiet", "--", "[[sleep: 600]] long"],
        env=cli_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: agent_containers(client, "proj", home), 60, "the run's container")
        with StateStore(home / "state" / "state.db") as state:
            run_id = wait_for(lambda: [r.run_id for r in state.unfinished_runs()
                                       if r.status == "running"], 60, "the running record")[0]
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    assert agent_containers(client, "proj", home), "the container outlived its orchestrator"
    done = run_cli(home, "run", "proj", "--quiet", "--", "after the crash")
    assert done.returncode == 0, done.stderr
    assert agent_containers(client, "proj", home) == []
    with StateStore(home / "state" / "state.db") as state:
        record = state.get_run(run_id)
    assert record.status == "finished" and record.exit_reason == "crashed"
    assert f"process {victim.pid}" in (record.error or "")


def test_two_processes_never_share_a_warm_container(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    write_config(home, {"proj": {"directory": str(project)}}, pool={"warm_per_agent": 2},
                 cache={"enabled": False})
    up = run_cli(home, "up", "proj")
    assert up.returncode == 0, up.stderr
    warm = {c.id for c in agent_containers(client, "proj", home)}
    assert len(warm) == 2
    runs = [subprocess.Popen([AD_SANDBOX, "run", "proj", "--json", "--", f"[[sleep: 1]] {n}"],
                             env=cli_env(home), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in runs]
    used = [r["container_id"] for r in results]
    assert all(r["success"] for r in results), results
    assert len(set(used)) == 2 and set(used) <= warm


def test_the_upstream_credential_never_reaches_the_container(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    from orchestrator.stub import StubServer

    secret = "sk-ant-api03-NEVER-IN-A-CONTAINER-" + os.urandom(6).hex()
    with StubServer("127.0.0.1", 0) as upstream:
        write_config(home, {"proj": {"directory": str(project)}},
                     model_api={"upstream": upstream.url, "credential": {"env": "UPSTREAM_KEY"}})
        seen: dict[str, Any] = {}
        runner = subprocess.Popen(
            [AD_SANDBOX, "run", "proj", "--json", "--",
             "[[bash: env; cat /proc/1/environ | tr '\\0' '\\n'; ls -la /run/secrets; sleep 3]]"],
            env=cli_env(home, UPSTREAM_KEY=secret), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        container = wait_for(lambda: agent_containers(client, "proj", home), 60, "the container")[0]
        seen["inspect"] = json.dumps(client.api.inspect_container(container.id))
        stdout, stderr = runner.communicate(timeout=120)
        result = json.loads(stdout)
        keys = [r["headers"].get("x-api-key") for r in upstream.received]
    assert result["success"], stderr
    assert secret not in seen["inspect"] and secret not in stdout and secret not in stderr
    assert keys and all(key == secret for key in keys)  # injected by the relay, upstream only
    env_lines = result["result"].splitlines()
    token = next(line.split("=", 1)[1] for line in env_lines
                 if line.startswith("ANTHROPIC_API_KEY="))
    assert token.startswith("ads-run-")
    log_text = "".join(p.read_text() for p in (home / "state" / "logs").glob("*.log"))
    assert secret not in log_text


def test_the_relay_refuses_requests_without_a_live_run_token(
    home: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    from orchestrator.dispatch.dispatcher import open_dispatcher
    from orchestrator.models import RunRequest

    write_config(home, {"proj": {"directory": str(project)}})
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(home / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(home / "state"))
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}

    async def main() -> list[int]:
        async with open_dispatcher() as dispatcher, httpx.AsyncClient(timeout=10) as http:
            result = await dispatcher.dispatch(RunRequest(
                agent="proj", task="[[bash: echo $ANTHROPIC_BASE_URL $ANTHROPIC_API_KEY]]"))
            assert result.success, result
            base, token = result.result.removeprefix("tool result: ").split()
            url = f"{base}/v1/messages"
            return [
                (await http.post(url, json=body)).status_code,
                (await http.post(url, json=body, headers={"x-api-key": token})).status_code,
                (await http.post(url, json=body,
                                 headers={"authorization": "Bearer sk-ant-x"})).status_code,
            ]

    # no token, the token of a run that has ended, a made-up key: all refused
    assert anyio.run(main) == [401, 401, 401]


def _last_record(home: Path, agent: str) -> dict[str, Any]:
    done = run_cli(home, "jobs", "--json", "--agent", agent)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert records, f"no record for {agent}"
    return dict(records[0])


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert " — " in lines[0] or "hint:" in stderr, stderr  # a next step
    assert "Traceback" not in stderr, stderr
    return lines[0]


def test_unknown_agent(home: Path, project: Path, client: docker.DockerClient) -> None:
    write_config(home, {"proj": {"directory": str(project)}})
    done = run_cli(home, "run", "nobody", "hi")
    assert done.returncode == 2
    assert "unknown agent 'nobody'" in _one_error_line(done.stderr)
    assert _last_record(home, "nobody")["error_type"] == "not_found"


def test_directory_deleted_after_add(home: Path, project: Path) -> None:
    write_config(home, {"proj": {"directory": str(project)}})
    project.rename(project.with_name("gone"))
    done = run_cli(home, "run", "proj", "hi")
    assert done.returncode == 2
    assert "does not exist" in _one_error_line(done.stderr)
    record = _last_record(home, "proj")
    assert record["status"] == "finished" and record["container_id"] is None


def test_image_missing(home: Path, project: Path) -> None:
    write_config(home, {"proj": {"directory": str(project), "image": "ad-sandbox/none:missing"}})
    done = run_cli(home, "run", "proj", "hi")
    assert done.returncode == 4
    line = _one_error_line(done.stderr)
    assert "ad-sandbox/none:missing" in line and "image build" in done.stderr
    record = _last_record(home, "proj")
    assert record["error_type"] == "sandbox" and record["status"] == "finished"


def test_docker_stopped(home: Path, project: Path) -> None:
    write_config(home, {"proj": {"directory": str(project)}})
    done = run_cli(home, "run", "proj", "hi", DOCKER_HOST=f"unix://{home}/no-engine.sock")
    assert done.returncode == 4
    assert "Docker engine not reachable" in _one_error_line(done.stderr)
    record = _last_record(home, "proj")
    assert record["error_type"] == "sandbox" and "not reachable" in record["error"]


def test_a_timed_out_runs_session_can_be_continued(home: Path, project: Path) -> None:
    write_config(home, {"proj": {"directory": str(project)}})
    # (claude refuses a plain long `sleep` in Bash, so the wait is python's)
    slow = "[[bash: python3 -c 'import time; time.sleep(60)']] a long job"
    code, first = run_json(home, "proj", slow, "--timeout", "8")
    assert code == 3 and first["exit_reason"] == "timeout", first
    assert first["session_id"]
    code, second = run_json(home, "proj", "[[reply: picked up where it stopped]]",
                            "--session", first["session_id"])
    assert code == 0, second
    assert second["result"] == "picked up where it stopped"
    assert second["session_id"] == first["session_id"]


def test_secrets_are_0400_files_and_never_leak(
    home: Path, project: Path, client: docker.DockerClient
) -> None:
    secret = "db-pass-" + os.urandom(8).hex()
    write_config(home, {"proj": {"directory": str(project),
                                 "secrets": {"DB_PASSWORD": {"env": "PROJ_DB"}}}})
    runner = subprocess.Popen(
        [AD_SANDBOX, "run", "proj", "--json", "--",
         "[[bash: stat -c '%a %u %n' /run/secrets/DB_PASSWORD; cat /run/secrets/DB_PASSWORD;"
         " sleep 2; echo]]"],
        env=cli_env(home, PROJ_DB=secret), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    container = wait_for(lambda: agent_containers(client, "proj", home), 60, "the container")[0]
    inspected = json.dumps(client.api.inspect_container(container.id))
    stdout, stderr = runner.communicate(timeout=120)
    result = json.loads(stdout)
    assert result["success"], stderr
    lines = result["result"].removeprefix("tool result: ").splitlines()
    run_uid = project.stat().st_uid or UNPRIVILEGED_ID  # a root-owned project runs as 65532
    assert lines[0] == f"400 {run_uid} /run/secrets/DB_PASSWORD"
    assert lines[1] == "[redacted:DB_PASSWORD]"  # the agent could read it; nobody sees it
    assert secret not in inspected and secret not in stdout and secret not in stderr
    logs = run_cli(home, "logs", result["run_id"])
    assert "[redacted:DB_PASSWORD]" in logs.stdout and secret not in logs.stdout


def test_max_concurrency_holds_across_processes(home: Path, project: Path) -> None:
    write_config(home, {"proj": {"directory": str(project)}}, max_concurrency=1,
                 cache={"enabled": False})
    runs = [subprocess.Popen(
        [AD_SANDBOX, "run", "proj", "--json", "--",
         f"[[bash: python3 -c 'import time; time.sleep(3)'; echo {n}]]"],
        env=cli_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for n in range(2)]
    outputs = [p.communicate(timeout=180) for p in runs]
    assert all(out.strip() for out, _ in outputs), outputs  # each printed its JSON result
    results = [json.loads(out) for out, _ in outputs]
    assert all(r["success"] for r in results), results
    with StateStore(home / "state" / "state.db") as state:
        spans = sorted((r.started_at or 0, r.finished_at or 0)
                       for r in (state.get_run(x["run_id"]) for x in results))
    assert spans[0][1] <= spans[1][0], f"the two runs overlapped: {spans}"
