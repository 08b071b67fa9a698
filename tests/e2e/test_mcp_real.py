"""Issue 4's proofs: a real MCP client against the real `ad-sandbox serve` (real engine, real
claude in the agent containers, the stub model), over stdio and over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from orchestrator.run.sandbox import (
    LABEL_AGENT,
    LABEL_CONFIG,
    LABEL_MANAGED,
    LABEL_RUN,
    config_identity,
)
from tests.e2e.test_mcp_clients import AD_SANDBOX, BASE_TOOLS, ROOT, http_server

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

DEADLINE = 180.0
MANAGEMENT = {"add_agent", "update_agent", "remove_agent"}


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(project),
                    *args], check=True, capture_output=True)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Two agents on the stub model, a group, management tools on within an allowed root."""
    root = tmp_path / "projects"
    for name in ("alpha", "beta"):
        (root / name).mkdir(parents=True)
        (root / name / "CLAUDE.md").write_text(f"# {name}\nThe {name} project.\n")
    (root / "alpha" / "pyproject.toml").write_text("[project]\nname = 'alpha'\n")
    (root / "spare").mkdir()
    git(root / "alpha", "init", "-q")
    git(root / "alpha", "commit", "-q", "--allow-empty", "-m", "first")
    config = {
        "settings": {"model_api": {"upstream": "stub", "credential": None},
                     "pool": {"warm_per_agent": 0}, "default_timeout": 120,
                     "agent_management_tools": True, "allowed_roots": [str(root)]},
        "agents": {name: {"directory": str(root / name), "description": f"{name} agent"}
                   for name in ("alpha", "beta")},
        "groups": {"pair": {"description": "both", "shared_context": "SHARED-CONTEXT-1",
                            "members": [{"agent": "alpha", "use_for": "a"},
                                        {"agent": "beta", "use_for": "b"}]}},
    }
    (tmp_path / "agents.yaml").write_text(json.dumps(config))
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT),
            "AD_SANDBOX_CONFIG": str(tmp_path / "agents.yaml"),
            "AD_SANDBOX_STATE_DIR": str(tmp_path / "state")}


def stdio(env: dict[str, str]) -> AbstractAsyncContextManager[Client]:
    return Client(StdioServerParameters(command=AD_SANDBOX, args=["serve"], env=env))


@asynccontextmanager
async def over_http(url: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(timeout=DEADLINE) as http, Client(
        streamable_http_client(url, http_client=http)
    ) as client:
        yield client


def body(result: Any) -> dict[str, Any]:
    if result.structured_content is not None:
        return dict(result.structured_content)
    return dict(json.loads(result.content[0].text))


def containers(env: dict[str, str], agent: str) -> list[Any]:
    """``agent``'s containers of this test's config only: agent names repeat across tests,
    and an engine may hold what earlier runs left."""
    labels = [f"{LABEL_MANAGED}=1", f"{LABEL_AGENT}={agent}",
              f"{LABEL_CONFIG}={config_identity(Path(env['AD_SANDBOX_CONFIG']))}"]
    engine = docker.from_env()
    try:
        return engine.containers.list(all=True, filters={"label": labels})
    finally:
        engine.close()


async def tool_tour(client: Client, projects: Path) -> None:
    """Every tool once, each with a check of what it answered."""
    names = {t.name for t in (await client.list_tools()).tools}
    assert names == BASE_TOOLS | MANAGEMENT

    agents = body(await client.call_tool("list_agents", {}))["agents"]
    assert [a["name"] for a in agents] == ["alpha", "beta"] and all(a["healthy"] for a in agents)
    detail = body(await client.call_tool("inspect_agent", {"name": "alpha", "preview_lines": 1}))
    assert detail["preview"] == "# alpha\n" and "python" in detail["stacks"]
    groups = body(await client.call_tool("list_groups", {}))["groups"]
    assert groups == [{"name": "pair", "description": "both", "members": ["alpha", "beta"]}]
    group = body(await client.call_tool("inspect_group", {"name": "pair"}))
    assert group["shared_context"] == "SHARED-CONTEXT-1"

    first = body(await client.call_tool("dispatch", {"agent": "alpha", "task": "hello",
                                                     "group": "pair"}))
    assert first["success"] and "SHARED-CONTEXT-1" in first["result"], first
    assert first["exit_reason"] == "completed" and first["container_id"]

    streamed = body(await client.call_tool("dispatch_stream",
                                           {"agent": "beta", "task": "[[reply: streamed]]"}))
    assert streamed["result"] == "streamed"
    resumed = body(await client.call_tool("dispatch_session", {
        "agent": "beta", "task": "[[reply: resumed]]", "session_id": streamed["session_id"]}))
    assert resumed["success"] and resumed["session_id"] == streamed["session_id"], resumed

    fan = body(await client.call_tool("dispatch_parallel", {
        "dispatches": [{"agent": "alpha", "task": "[[reply: one]]"},
                       {"agent": "beta", "task": "[[reply: two]]"}],
        "aggregate": "alpha"}))
    assert [r["result"] for r in fan["results"]] == ["one", "two"]
    assert fan["aggregate"]["success"]

    talk = body(await client.call_tool("dispatch_dialogue", {
        "requester": "alpha", "responder": "beta", "max_rounds": 2,
        "topic": "Agree on a name. [[reply: Agreed: ada\n[RESOLVED]\n]]"}))
    assert talk["resolved"] and talk["rounds"][0]["speaker"] == "alpha"

    job = body(await client.call_tool("dispatch_async",
                                      {"agent": "alpha", "task": "[[reply: later]]"}))["job_id"]
    waited = body(await client.call_tool("dispatch_wait", {"job_id": job, "timeout_seconds": 60}))
    assert waited["status"] == "finished" and waited["result"]["result"] == "later"
    status = body(await client.call_tool("dispatch_status", {"job_id": job}))
    assert status["exit_reason"] == "completed"
    listed = body(await client.call_tool("dispatch_jobs", {"limit": 50}))["jobs"]
    assert job in {j["job_id"] for j in listed}

    ref = body(await client.call_tool("dispatch", {
        "agent": "beta", "task": "[[reply: a long answer kept by reference]]",
        "return_ref": True, "summary_chars": 6}))
    assert ref["ref"] and ref["result"] == "a long"
    fetched = body(await client.call_tool("fetch_result", {"ref": ref["ref"], "max_chars": 100}))
    assert fetched["text"] == "a long answer kept by reference"

    stats = body(await client.call_tool("cache_stats", {}))["stats"]
    assert stats["entries"] >= 1 and stats["misses"] >= 1
    cleared = body(await client.call_tool("cache_clear", {}))
    assert cleared["removed"] >= 1
    sandbox = body(await client.call_tool("sandbox_status", {}))
    assert sandbox["docker"] and sandbox["budget"]["daily"] > 0
    assert body(await client.call_tool("dispatch_gc", {}))["removed"] >= 0

    added = body(await client.call_tool("add_agent", {"name": "spare", "directory":
                                                      str(projects / "spare")}))
    assert added["name"] == "spare" and added["healthy"]
    updated = body(await client.call_tool("update_agent", {"name": "spare",
                                                           "description": "changed"}))
    assert updated["description"] == "changed"
    outside = await client.call_tool("add_agent", {"name": "root", "directory": "/"})
    assert outside.is_error and "allowed_roots" in outside.content[0].text
    removed = body(await client.call_tool("remove_agent", {"name": "spare"}))
    assert removed["removed"]


def test_every_tool_over_stdio(env: dict[str, str]) -> None:
    projects = Path(env["AD_SANDBOX_CONFIG"]).parent / "projects"

    async def main() -> None:
        with anyio.fail_after(DEADLINE):
            async with stdio(env) as client:
                await tool_tour(client, projects)

    anyio.run(main)
    assert containers(env, "alpha") == [] and containers(env, "beta") == []


def test_every_tool_over_http(env: dict[str, str]) -> None:
    projects = Path(env["AD_SANDBOX_CONFIG"]).parent / "projects"

    async def main(url: str) -> None:
        with anyio.fail_after(DEADLINE):
            async with over_http(url) as client:
                await tool_tour(client, projects)

    with http_server([AD_SANDBOX, "serve"], env) as url:
        anyio.run(main, url)


@contextmanager
def connected(transport: str, env: dict[str, str]) -> Iterator[Callable[[], Any]]:
    """A factory of client contexts for ``transport`` (an HTTP server lives for the block)."""
    if transport == "stdio":
        yield lambda: stdio(env)
        return
    with http_server([AD_SANDBOX, "serve"], env) as url:
        yield lambda: over_http(url)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_progress_notifications_arrive_while_the_agent_works(
    env: dict[str, str], transport: str
) -> None:
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async def main(client_for: Callable[[], Any]) -> dict[str, Any]:
        async with client_for() as client:
            return body(await client.call_tool(
                "dispatch", {"agent": "alpha", "task": "[[bash: sleep 6; echo slept]]"},
                progress_callback=on_progress))

    with connected(transport, env) as client_for:
        result = anyio.run(main, client_for)
    assert result["result"] == "tool result: slept"
    assert any("Bash: sleep 6" in m for m in seen), seen  # the agent's last action
    assert any("tok" in m and "$" in m for m in seen)     # tokens and cost so far


async def _wait_running(env: dict[str, str], agent: str) -> None:
    with anyio.fail_after(60):
        # A run's container: a volume's set-up helper carries the agent's labels too.
        while not [c for c in containers(env, agent)
                   if c.status == "running" and c.labels.get(LABEL_RUN)]:
            await anyio.sleep(0.2)


async def _gone_within_2s(env: dict[str, str], agent: str) -> None:
    started = time.monotonic()
    with anyio.fail_after(2):
        while containers(env, agent):
            await anyio.sleep(0.05)
    assert time.monotonic() - started < 2


async def _last_job(client: Client) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        job = body(await client.call_tool("dispatch_jobs", {"limit": 1}))["jobs"][0]
        if job["status"] == "finished" or time.monotonic() > deadline:
            return dict(job)
        await anyio.sleep(0.1)


def test_notifications_cancelled_kills_the_container_within_2s(env: dict[str, str]) -> None:
    async def main() -> dict[str, Any]:
        async with stdio(env) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "dispatch",
                              {"agent": "alpha", "task": "[[sleep: 600]] forever"})
                await _wait_running(env, "alpha")
                tg.cancel_scope.cancel()  # the client sends notifications/cancelled
            await _gone_within_2s(env, "alpha")
            return await _last_job(client)

    assert anyio.run(main)["exit_reason"] == "cancelled"


def test_dispatch_cancel_over_http_kills_the_container_within_2s(env: dict[str, str]) -> None:
    """Over HTTP (2026-07-28) a client cancels by closing its stream, which is also what a
    client going away looks like: the run goes on; `dispatch_cancel` is how it is stopped."""
    answers: list[dict[str, Any]] = []

    async def main(url: str) -> dict[str, Any]:
        async with over_http(url) as client:
            async def waiting_caller() -> None:
                answers.append(body(await client.call_tool(
                    "dispatch", {"agent": "alpha", "task": "[[sleep: 600]] forever"})))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting_caller)
                await _wait_running(env, "alpha")
                running = body(await client.call_tool("dispatch_jobs", {"status": "running"}))
                job_id = running["jobs"][0]["job_id"]
                cancelled = body(await client.call_tool("dispatch_cancel", {"job_id": job_id}))
                await _gone_within_2s(env, "alpha")
            return cancelled

    with http_server([AD_SANDBOX, "serve"], env) as url:
        cancelled = anyio.run(main, url)
    assert cancelled["exit_reason"] == "cancelled" and cancelled["status"] == "finished"
    assert answers and answers[0]["exit_reason"] == "cancelled"  # the waiting call is told


def test_a_disconnect_mid_run_loses_nothing(env: dict[str, str]) -> None:
    """The client goes away (stdin closed, no cancel); the run finishes and is fetched later."""
    server = subprocess.Popen([AD_SANDBOX, "serve"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdin is not None and server.stdout is not None

    def send(message: dict[str, Any]) -> None:
        assert server.stdin is not None
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        server.stdin.flush()

    send({"id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "leaver", "version": "1"}}})
    assert json.loads(server.stdout.readline())["id"] == 1
    send({"method": "notifications/initialized"})
    send({"id": 2, "method": "tools/call", "params": {
        "name": "dispatch", "arguments": {"agent": "alpha", "task": "[[sleep: 4]] finish me"}}})
    deadline = time.monotonic() + 60
    while not containers(env, "alpha") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers(env, "alpha"), "the run never started"
    server.stdin.close()  # the client is gone
    assert server.wait(60) == 0  # it finished the run before leaving
    server.stdout.close()
    jobs = subprocess.run([AD_SANDBOX, "jobs", "--json", "--agent", "alpha"], env=env,
                          capture_output=True, text=True, check=True)
    record = json.loads(jobs.stdout)[0]
    assert record["status"] == "finished" and record["exit_reason"] == "completed"
    assert record["success"] and record["result"].startswith("echo: ")

    async def fetch() -> str:
        async with stdio(env) as client:
            return str(body(await client.call_tool("fetch_result",
                                                   {"ref": record["run_id"]}))["text"])

    assert anyio.run(fetch) == record["result"]


def test_an_http_client_dropping_the_connection_loses_nothing(env: dict[str, str]) -> None:
    """Over HTTP the client just goes away mid-call (no cancel): the run still finishes."""
    headers = {"accept": "application/json, text/event-stream",
               "content-type": "application/json"}
    with http_server([AD_SANDBOX, "serve"], env) as url:
        init = httpx2.post(url, headers=headers, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "dropper", "version": "1"}}})
        assert init.status_code == 200, init.text
        session = {**headers, "mcp-protocol-version": "2025-11-25"}
        if "mcp-session-id" in init.headers:
            session["mcp-session-id"] = init.headers["mcp-session-id"]
        httpx2.post(url, headers=session, timeout=30,
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        with pytest.raises(httpx2.TimeoutException):  # we hang up after 2 s, mid-run
            httpx2.post(url, headers=session, timeout=2, json={
                "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                    "name": "dispatch",
                    "arguments": {"agent": "beta", "task": "[[sleep: 5]] still wanted"}}})
        deadline = time.monotonic() + 60
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            jobs = subprocess.run([AD_SANDBOX, "jobs", "--json", "--agent", "beta"], env=env,
                                  capture_output=True, text=True, check=True)
            found = json.loads(jobs.stdout)
            if found and found[0]["status"] == "finished":
                record = found[0]
                break
            time.sleep(0.5)
    assert record.get("exit_reason") == "completed", record
    assert record["success"] and "still wanted" in record["result"]


def test_cache_hits_then_misses_after_a_commit(env: dict[str, str]) -> None:
    project = Path(env["AD_SANDBOX_CONFIG"]).parent / "projects" / "alpha"

    async def main() -> list[dict[str, Any]]:
        async with stdio(env) as client:
            async def ask() -> dict[str, Any]:
                return body(await client.call_tool("dispatch", {"agent": "alpha",
                                                                "task": "cached?"}))
            first, second = await ask(), await ask()
            git(project, "commit", "-q", "--allow-empty", "-m", "second")
            third = await ask()
            return [first, second, third]

    first, second, third = anyio.run(main)
    assert not first["cached"] and second["cached"] and not third["cached"]
    assert second["cost_usd"] == 0 and second["result"] == first["result"]
    assert third["run_id"] != first["run_id"]


BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("dispatch", {"agent": "alpha", "task": 42}, ""),
    ("dispatch", {"agent": "nobody", "task": "x"}, "not_found"),
    ("dispatch", {"agent": "alpha", "task": "   "}, "empty"),
    ("dispatch", {"agent": "alpha", "task": "x", "context": "c" * 1_048_576}, "limit"),
    ("dispatch", {"agent": "alpha", "task": "x", "timeout_seconds": -1}, ""),
    ("dispatch_parallel", {"dispatches": [{"agent": "alpha", "task": "ok"},
                                          {"agent": "nobody", "task": "x"}]}, "dispatches[1]"),
    ("dispatch_dialogue", {"requester": "alpha", "responder": "alpha", "topic": "t"}, ""),
    ("dispatch_status", {"job_id": "no-such-job"}, "not_found"),
    ("fetch_result", {"ref": "nope"}, "not_found"),
    ("inspect_agent", {"name": "nobody"}, "not_found"),
    ("inspect_group", {"name": "nobody"}, "not_found"),
    ("dispatch_jobs", {"status": "exploded"}, "status"),
]


def test_bad_arguments_get_clear_errors_and_the_server_keeps_serving(
    env: dict[str, str],
) -> None:
    async def main() -> list[tuple[bool, str]]:
        answers = []
        async with stdio(env) as client:
            for name, args, _ in BAD_CALLS:
                result = await client.call_tool(name, args)
                answers.append((result.is_error, " ".join(
                    getattr(c, "text", "") for c in result.content)))
            dashed = body(await client.call_tool("dispatch",
                                                 {"agent": "alpha", "task": "--version"}))
            assert dashed["success"] and "--version" in dashed["result"]
        return answers

    answers = anyio.run(main)
    for (name, _, needle), (is_error, text) in zip(BAD_CALLS, answers, strict=True):
        assert is_error, (name, text)
        assert needle in text, (name, needle, text)
    assert containers(env, "alpha") == []  # the bad parallel call ran nothing


def _claude(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    from orchestrator import CLAUDE_VERSION
    from orchestrator.runtime.staging import stage_claude

    binary = str(stage_claude(CLAUDE_VERSION, lambda line: None).path)

    def run(*args: str, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], env={**env, **extra}, input=stdin,
                              capture_output=True, text=True, timeout=DEADLINE, check=False,
                              stdin=None if stdin is not None else subprocess.DEVNULL)

    return run


def test_claude_code_is_the_mcp_client(env: dict[str, str]) -> None:
    """`claude mcp add` + `claude mcp list` connect; a host `claude -p` whose model calls
    mcp__ad-sandbox__dispatch really runs the task in an agent container."""
    from orchestrator.stub import StubServer

    claude = _claude(env)
    quiet = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
             "CLAUDE_CONFIG_DIR": str(Path(env["HOME"]) / ".claude")}
    added = claude("mcp", "add", "ad-sandbox",
                   "-e", f"AD_SANDBOX_CONFIG={env['AD_SANDBOX_CONFIG']}",
                   "-e", f"AD_SANDBOX_STATE_DIR={env['AD_SANDBOX_STATE_DIR']}",
                   "--", AD_SANDBOX, "serve", **quiet)
    assert added.returncode == 0, added.stderr
    listed = claude("mcp", "list", **quiet)
    assert "ad-sandbox" in listed.stdout and "Connected" in listed.stdout, listed.stdout
    call = ('[[tool: mcp__ad-sandbox__dispatch {"agent": "beta", '
            '"task": "[[reply: hello from the beta container]]"}]]')
    with StubServer() as host_model:
        done = claude("-p", "--output-format", "json",
                      "--allowedTools", "mcp__ad-sandbox__dispatch", stdin=call,
                      ANTHROPIC_BASE_URL=host_model.url, ANTHROPIC_API_KEY="host-stub",
                      CLAUDE_CODE_MAX_RETRIES="0", MCP_TOOL_TIMEOUT="120000", **quiet)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert not answer["is_error"], answer
    assert "hello from the beta container" in answer["result"]
    assert '"exit_reason": "completed"' in answer["result"] or "completed" in answer["result"]
    jobs = subprocess.run([AD_SANDBOX, "jobs", "--json", "--agent", "beta"], env=env,
                          capture_output=True, text=True, check=True)
    assert json.loads(jobs.stdout)[0]["result"] == "hello from the beta container"


def test_a_restart_reattaches_jobs_whose_container_still_runs(env: dict[str, str]) -> None:
    """kill -9 of `serve` mid-job; the next `serve` re-attaches and the job completes."""
    import signal

    from orchestrator.state import StateStore

    server = subprocess.Popen([AD_SANDBOX, "serve"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdin is not None and server.stdout is not None

    def call(message: dict[str, Any]) -> dict[str, Any]:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        server.stdin.flush()
        return dict(json.loads(server.stdout.readline())) if "id" in message else {}

    call({"id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "restarter", "version": "1"}}})
    call({"method": "notifications/initialized"})
    started = call({"id": 2, "method": "tools/call", "params": {
        "name": "dispatch_async",
        "arguments": {"agent": "alpha", "task": "[[bash: sleep 8; echo survived]]"}}})
    job = started["result"]["structuredContent"]["job_id"]
    state_db = Path(env["AD_SANDBOX_STATE_DIR"]) / "state.db"
    with StateStore(state_db) as state:  # wait until the agent is inside its Bash call
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Bash" not in state.get_run(job).last_action:
            time.sleep(0.2)
        assert "Bash: sleep 8" in state.get_run(job).last_action
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    server.stdin.close()
    server.stdout.close()
    assert [c for c in containers(env, "alpha") if c.status == "running"], "container died with it"

    async def after_restart() -> dict[str, Any]:
        async with stdio(env) as client:
            return body(await client.call_tool("dispatch_wait",
                                               {"job_id": job, "timeout_seconds": 90}))

    waited = anyio.run(after_restart)
    assert waited["status"] == "finished", waited
    assert waited["exit_reason"] == "completed", waited
    assert waited["result"]["result"] == "tool result: survived"
    assert containers(env, "alpha") == []


def test_an_http_server_told_to_stop_leaves_its_jobs_to_the_next(env: dict[str, str]) -> None:
    """SIGTERM of `serve --transport http` mid-job: it exits promptly without killing the
    job; the next `serve` re-attaches it and the job completes."""

    async def start_job(url: str) -> str:
        async with over_http(url) as client:
            started = body(await client.call_tool("dispatch_async", {
                "agent": "beta",
                "task": "[[bash: python3 -c 'import time; time.sleep(6)'; echo kept]]"}))
            job = str(started["job_id"])
            with anyio.fail_after(60):  # until the agent is inside its Bash call
                while "Bash" not in body(await client.call_tool(
                        "dispatch_status", {"job_id": job}))["last_action"]:
                    await anyio.sleep(0.2)
            return job

    with http_server([AD_SANDBOX, "serve"], env) as url:
        job = anyio.run(start_job, url)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10  # terminate + wait inside http_server
    assert [c for c in containers(env, "beta") if c.status == "running"]

    async def after(client_for: Callable[[], Any]) -> dict[str, Any]:
        async with client_for() as client:
            return body(await client.call_tool("dispatch_wait",
                                               {"job_id": job, "timeout_seconds": 90}))

    waited = anyio.run(after, lambda: stdio(env))
    assert waited["exit_reason"] == "completed", waited
    assert waited["result"]["result"] == "tool result: kept"
