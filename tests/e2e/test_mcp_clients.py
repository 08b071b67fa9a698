"""Independent MCP clients against the real server process, over stdio and HTTP.

The Inspector CLI and the conformance suite (installed by scripts/mcp-clients.sh)
drive ``python -m tests.fake_serve`` (the real MCP layer and service, on the fake runtime). The
``real`` variants drive ``ad-sandbox serve`` over the real dispatch service; they run
once ``orchestrator.dispatch.dispatcher.open_service`` exists and need Docker and the agent image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
AD_SANDBOX = str(Path(PYTHON).with_name("ad-sandbox"))
FAKE_SERVE = [PYTHON, "-m", "tests.fake_serve"]
START_DEADLINE = 30.0
CLIENT_DEADLINE = 120.0
BASE_TOOLS = {
    "dispatch", "dispatch_session", "dispatch_parallel", "dispatch_stream", "dispatch_dialogue",
    "dispatch_async", "dispatch_status", "dispatch_wait", "dispatch_cancel", "dispatch_jobs",
    "fetch_result", "dispatch_gc", "list_agents", "inspect_agent", "list_groups",
    "inspect_group", "cache_stats", "cache_clear", "sandbox_status",
}
GENERIC_SCENARIOS = [
    "server-initialize", "ping", "tools-list", "prompts-list", "resources-list",
    "dns-rebinding-protection",
]


@pytest.fixture(scope="session")
def node() -> str:
    """Node 22 from scripts/mcp-clients.sh (installs the clients on first use)."""
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed (scripts/bootstrap.sh installs it)", pytrace=False)
    done = subprocess.run(
        [str(ROOT / "scripts" / "mcp-clients.sh")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _package(node: str, *parts: str) -> str:
    return str(Path(node).parents[2].joinpath("@modelcontextprotocol", *parts))


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """A throwaway HOME for node clients; the repo root on PYTHONPATH for tests.*."""
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}


@pytest.fixture
def real_env(tmp_path: Path) -> dict[str, str]:
    """Config and state for ``ad-sandbox serve`` with one agent on the stub model."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "CLAUDE.md").write_text("# e2e agent\n")
    config = tmp_path / "agents.yaml"
    config.write_text(
        "settings:\n"
        "  model_api: {upstream: stub, credential: null}\n"
        "  pool: {warm_per_agent: 0}\n"
        "agents:\n"
        f"  e2e: {{directory: {json.dumps(str(project))}, description: e2e agent}}\n"
    )
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "AD_SANDBOX_CONFIG": str(config),
        "AD_SANDBOX_STATE_DIR": str(tmp_path / "state"),
    }


@contextmanager
def http_server(
    command: list[str], env: dict[str, str], *extra: str
) -> Iterator[str]:
    """Start a server with ``--transport http --port 0``; yield its URL from the ready line."""
    proc = subprocess.Popen(
        [*command, "--transport", "http", "--host", "127.0.0.1", "--port", "0", *extra],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    ready = threading.Event()
    url: list[str] = []
    log: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if not url and "listening on " in line:
                url.append(line.split("listening on ", 1)[1].strip())
                ready.set()
        ready.set()  # the process ended: stop waiting

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(START_DEADLINE) and url, "server did not start:\n" + "".join(log)
        yield url[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()


def inspector(node: str, env: dict[str, str], server: list[str], *args: str) -> tuple[int, str]:
    launcher = _package(node, "inspector", "clients", "launcher", "build", "index.js")
    done = subprocess.run(
        [node, launcher, "--cli", *server, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLIENT_DEADLINE, check=False,
    )
    return done.returncode, done.stdout + done.stderr


def conformance(node: str, env: dict[str, str], url: str, scenario: str, cwd: Path) -> str:
    suite = _package(node, "conformance", "dist", "index.js")
    done = subprocess.run(
        [node, suite, "server", "--url", url, "--scenario", scenario],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=CLIENT_DEADLINE, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert " 0 failed" in output, output
    return output


# --- against the MCP layer over the service on the fake runtime --------------------------


def test_inspector_lists_and_calls_tools(node: str, client_env: dict[str, str]) -> None:
    code, out = inspector(node, client_env, FAKE_SERVE, "--method", "tools/list")
    assert code == 0, out
    tools = {tool["name"] for tool in json.loads(out[: out.rindex("}") + 1])["tools"]}
    assert tools == BASE_TOOLS

    call = ["--method", "tools/call", "--tool-name", "dispatch", "--format", "json"]
    code, out = inspector(
        node, client_env, FAKE_SERVE, *call, "--tool-arg", "agent=alpha", "--tool-arg", "task=--x"
    )
    assert code == 0, out
    assert "## Task\\n--x" in out  # the stub echoes the prompt: the task went in as text
    code, out = inspector(
        node, client_env, FAKE_SERVE, *call, "--tool-arg", "agent=nobody", "--tool-arg", "task=x"
    )
    assert code == 5, out  # the Inspector's exit code for an isError result
    assert "not_found" in out


def test_stdio_client_gets_results_and_progress(client_env: dict[str, str]) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async def session() -> None:
        params = StdioServerParameters(command=PYTHON, args=FAKE_SERVE[1:], env=client_env,
                                       cwd=str(ROOT))
        with anyio.fail_after(CLIENT_DEADLINE):
            async with Client(params) as client:
                result = await client.call_tool(
                    "dispatch", {"agent": "beta", "task": "[[sleep: 0.3]] [[reply: done: t]]"},
                    progress_callback=on_progress,
                )
                assert (result.structured_content or {}).get("result") == "done: t"
                bad = await client.call_tool("dispatch", {"agent": "beta", "task": 7})
                assert bad.is_error
                assert not (await client.call_tool("sandbox_status", {})).is_error

    anyio.run(session)
    assert messages and all(m.startswith("beta: ") for m in messages)


@pytest.fixture(scope="module")
def fake_http_url() -> Iterator[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AD_SANDBOX_MCP_TOKEN", None)
    with http_server(FAKE_SERVE, env) as url:
        yield url


@pytest.mark.parametrize("scenario", GENERIC_SCENARIOS)
def test_conformance_generic_scenarios(
    node: str, client_env: dict[str, str], fake_http_url: str, scenario: str, tmp_path: Path
) -> None:
    conformance(node, client_env, fake_http_url, scenario, tmp_path)


async def _list_tools(url: str, headers: dict[str, str]) -> set[str]:
    with anyio.fail_after(CLIENT_DEADLINE):
        async with httpx2.AsyncClient(headers=headers) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport) as client:
                return {tool.name for tool in (await client.list_tools()).tools}


def test_http_bearer_token(client_env: dict[str, str]) -> None:
    env = {**client_env, "AD_SANDBOX_MCP_TOKEN": "e2e-secret"}
    with http_server(FAKE_SERVE, env) as url:
        denied = httpx2.post(url, json={}, timeout=CLIENT_DEADLINE)
        assert denied.status_code == 401
        names = anyio.run(_list_tools, url, {"Authorization": "Bearer e2e-secret"})
    assert names == BASE_TOOLS


def test_serve_refuses_public_bind_without_token(client_env: dict[str, str]) -> None:
    env = {k: v for k, v in client_env.items() if k != "AD_SANDBOX_MCP_TOKEN"}
    done = subprocess.run(
        [AD_SANDBOX, "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "without a bearer token" in done.stderr
    assert done.stdout == ""


# --- against the real `ad-sandbox serve` ------------------------------------------------


@pytest.mark.docker
def test_real_serve_over_stdio_dispatches(real_env: dict[str, str]) -> None:
    async def session() -> None:
        params = StdioServerParameters(command=AD_SANDBOX, args=["serve"], env=real_env)
        with anyio.fail_after(CLIENT_DEADLINE):
            async with Client(params) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert names == BASE_TOOLS
                agents = await client.call_tool("list_agents", {})
                assert [a["name"] for a in (agents.structured_content or {})["agents"]] == ["e2e"]
                result = await client.call_tool("dispatch", {"agent": "e2e", "task": "--say hi"})
                body = result.structured_content or {}
                assert body.get("success") is True, result.content
                assert body["agent"] == "e2e"
                missing = await client.call_tool("dispatch", {"agent": "nobody", "task": "x"})
                assert missing.is_error

    anyio.run(session)


@pytest.mark.docker
def test_inspector_lists_tools_and_dispatches_on_real_serve(
    node: str, real_env: dict[str, str]
) -> None:
    # The Inspector gives a stdio server only a minimal environment: pass ours with -e.
    server = [*_env_args(real_env), AD_SANDBOX, "serve"]
    code, out = inspector(node, real_env, server, "--method", "tools/list")
    assert code == 0, out
    assert {tool["name"] for tool in json.loads(out[: out.rindex("}") + 1])["tools"]} == BASE_TOOLS
    code, out = inspector(node, real_env, server, "--method", "tools/call",
                          "--tool-name", "dispatch", "--tool-arg", "agent=e2e",
                          "--tool-arg", "task=[[reply: from the sandbox]]", "--format", "json")
    assert code == 0, out
    answer = json.loads(out[out.index("{"): out.rindex("}") + 1])["result"]
    assert answer["isError"] is False, answer
    assert answer["structuredContent"]["result"] == "from the sandbox"
    assert answer["structuredContent"]["exit_reason"] == "completed"


def _env_args(env: dict[str, str]) -> list[str]:
    names = ("AD_SANDBOX_CONFIG", "AD_SANDBOX_STATE_DIR", "HOME", "PATH")
    return [arg for name in names for arg in ("-e", f"{name}={env[name]}")]


@pytest.mark.docker
@pytest.mark.parametrize("scenario", GENERIC_SCENARIOS)
def test_conformance_against_real_serve(
    node: str, real_env: dict[str, str], scenario: str, tmp_path: Path
) -> None:
    with http_server([AD_SANDBOX, "serve"], real_env) as url:
        conformance(node, real_env, url, scenario, tmp_path)
