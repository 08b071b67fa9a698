"""Nested dispatch over the real service, gateway and ``/mcp`` on the fake runtime.

The ``claude`` here reads the ``--mcp-config`` the runner wrote into the run's directory and
calls the gateway's ``/mcp`` with the real MCP client and its run token, as the real claude
does (tests/e2e/test_nested.py runs that one). A task ``NEST<<{"tool": ..., "args": ...}>>NEST``
makes it call that tool and answer with what came back.
"""

from __future__ import annotations

import json
import queue
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from orchestrator.config import Agent, Budget, Config, ModelApi, Pool, Settings
from orchestrator.configfile import save_config
from orchestrator.dispatch import Service, open_service
from orchestrator.models import RunRequest
from orchestrator.paths import CONFIG_ENV, STATE_ENV
from orchestrator.runtime.fake import FakeExec, FakeRuntime
from orchestrator.server.agentmcp import agent_mcp_routes
from tests.fake_claude import claude_argv, fake_claude, prompt_of
from tests.servicekit import BLOCK, BLOCK_LIMIT_S

pytestmark = pytest.mark.anyio

NEST = re.compile(r"NEST<<(.*)>>NEST", re.S)
DEADLINE = 30.0
TOOLS = ("dispatch", "dispatch_parallel", "list_agents", "dispatch_session")


def nest(tool: str, **args: Any) -> str:
    return f"NEST<<{json.dumps({'tool': tool, 'args': args})}>>NEST"


async def _call(url: str, headers: dict[str, str], tool: str, args: dict[str, Any]) -> str:
    with anyio.fail_after(DEADLINE):
        async with (httpx2.AsyncClient(headers=headers) as http,
                    Client(streamable_http_client(url, http_client=http)) as client):
            result = await client.call_tool(tool, args)
    text = "".join(getattr(block, "text", "") for block in result.content)
    data = json.loads(text) if text.startswith("{") else {}
    if tool in ("dispatch", "dispatch_session") and data.get("success"):
        return str(data["result"])
    return text


def nested_claude(proc: FakeExec, found: list[dict[str, Any]]) -> int:
    """claude with the orchestrator's MCP server: one tool call, its answer as the result."""
    argv = claude_argv(proc)
    config_path = argv[argv.index("--mcp-config") + 1]
    file = proc.read_file(config_path)
    assert file is not None, "no --mcp-config file in the container"
    server = json.loads(file.data)["mcpServers"]["ad-sandbox"]
    found.append({"argv": argv, "server": server})
    match = NEST.search(prompt_of(proc))
    assert match is not None
    call = json.loads(match.group(1))
    text = anyio.run(_call, server["url"], server["headers"], call["tool"], call["args"])
    # The answer goes through the model like claude's last turn (a result is checked
    # against what the gateway relayed).
    proc.stdin = f"[[reply: {text}]]".encode()
    return fake_claude(proc)


def write_home(root: Path, **settings: Any) -> dict[str, str]:
    projects = root / "projects"
    targets = {"a": ["b"], "b": ["c"], "c": [], "d": []}
    agents = {}
    for name, dispatch_to in targets.items():
        (projects / name).mkdir(parents=True, exist_ok=True)
        agents[name] = Agent(directory=str(projects / name), description=f"{name} agent",
                             dispatch_to=dispatch_to)
    settings.setdefault("budget", Budget(per_run=1.0, per_root=5.0, daily=49.5))
    config = Config(
        settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                          pool=Pool(warm_per_agent=0), allowed_roots=[str(projects)],
                          **settings),
        agents=agents)
    save_config(config, root / "agents.yaml")
    return {CONFIG_ENV: str(root / "agents.yaml"), STATE_ENV: str(root / "state")}


class Kit:
    def __init__(self, service: Service, started: queue.Queue[str],
                 found: list[dict[str, Any]]) -> None:
        self.service = service
        self.state = service.state
        self.started = started
        self.found = found

    async def run(self, agent: str, task: str) -> Any:
        with anyio.fail_after(DEADLINE):
            return await self.service.run(RunRequest(agent=agent, task=task))

    def children(self, run_id: str) -> list[Any]:
        return [r for r in self.state.list_runs(limit=100) if r.parent_id == run_id]


@asynccontextmanager
async def open_kit() -> AsyncIterator[Kit]:
    started: queue.Queue[str] = queue.Queue()
    found: list[dict[str, Any]] = []

    def claude(proc: FakeExec) -> int | None:
        started.put(proc.container_id)
        prompt = prompt_of(proc)
        if NEST.search(prompt):
            return nested_claude(proc, found)
        if BLOCK in prompt:
            proc.out(json.dumps({"type": "system", "subtype": "init", "session_id": "b"}))
            proc.wait_ended(BLOCK_LIMIT_S)
            return None
        return fake_claude(proc)

    runtime = FakeRuntime()
    runtime.on_command("bash", claude)
    async with open_service(warm=False, reattach=False, runtime=runtime,
                            gateway_host="127.0.0.1", image_id=lambda ref: "sha256:fake",
                            agent_mcp=agent_mcp_routes) as service:
        kit = Kit(service, started, found)
        try:
            yield kit
        finally:
            with anyio.CancelScope(shield=True):
                for record in kit.state.unfinished_runs():
                    await service.cancel(record.run_id)


def use_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> None:
    for name, value in write_home(tmp_path, **settings).items():
        monkeypatch.setenv(name, value)


async def test_parent_gets_the_childs_answer(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as kit:
        result = await kit.run("a", nest("dispatch", agent="b", task="[[reply: from-child]]"))
        assert result.success, result
        assert result.result == "from-child"
        [child] = kit.children(result.run_id)
        parent = kit.state.get_run(result.run_id)
        assert (child.agent, child.depth, child.root_id) == ("b", 1, parent.root_id)
        assert child.caller == f"a (run {result.run_id})"
        seen = kit.found[0]
        assert seen["server"]["type"] == "http"
        assert seen["server"]["url"].endswith("/mcp")
        assert seen["server"]["headers"]["Authorization"].startswith("Bearer ads-run-")
        argv = seen["argv"]
        allowed = {argv[i + 1] for i, arg in enumerate(argv) if arg == "--allowedTools"}
        assert {f"mcp__ad-sandbox__{name}" for name in TOOLS} <= allowed
        # Spend of the child is booked under the root the parent started.
        assert kit.state.spent_root(parent.root_id) >= kit.state.spent_root(child.run_id)


async def test_only_dispatch_to_is_reachable(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as kit:
        refused = await kit.run("a", nest("dispatch", agent="d", task="[[reply: no]]"))
        assert "dispatch_to" in refused.result and '"success": false' in refused.result
        assert kit.children(refused.run_id) == []
        listed = await kit.run("a", nest("list_agents"))
        assert [a["name"] for a in json.loads(listed.result)["agents"]] == ["b"]


async def test_depth_past_the_limit_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch, max_dispatch_depth=1)
    async with open_kit() as kit:
        inner = nest("dispatch", agent="c", task="[[reply: too-deep]]")
        result = await kit.run("a", nest("dispatch", agent="b", task=inner))
        assert "max_dispatch_depth = 1" in result.result
        assert "too-deep" not in result.result


async def test_three_levels_with_one_slot(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch, max_concurrency=1)
    async with open_kit() as kit:
        inner = nest("dispatch", agent="c", task="[[reply: deep]]")
        result = await kit.run("a", nest("dispatch", agent="b", task=inner))
        assert result.success and result.result == "deep", result
        [b] = kit.children(result.run_id)
        [c] = kit.children(b.run_id)
        assert (b.depth, c.depth) == (1, 2)
        assert c.root_id == b.root_id == kit.state.get_run(result.run_id).root_id
        tree = kit.state.stats()["roots"][c.root_id]
        assert (tree["runs"], tree["nested"]) == (3, True)


async def test_cancelling_the_parent_cancels_the_child(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as kit:
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                parent_id = kit.service.dispatcher.start_async(
                    RunRequest(agent="a", task=nest("dispatch", agent="b", task=BLOCK)))
                while not kit.children(parent_id) or not kit.children(parent_id)[0].container_id:
                    await anyio.sleep(0.05)
                [child] = kit.children(parent_id)
                began = time.monotonic()
                tg.start_soon(kit.service.cancel, parent_id)
                while kit.state.get_run(child.run_id).status != "finished":
                    await anyio.sleep(0.02)
                assert time.monotonic() - began < 2.0
        record = kit.state.get_run(child.run_id)
        assert record.exit_reason == "cancelled"
        assert parent_id in (record.error or "") + (record.hint or "")
        assert kit.state.get_run(parent_id).exit_reason == "cancelled"


async def test_mcp_needs_a_live_run_token(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as kit:
        await kit.run("c", "[[reply: up]]")  # starts the gateway
        url = kit.service.dispatcher.host.gateway.mcp_url
        assert url is not None
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        for headers in ({}, {"Authorization": "Bearer ads-run-forged"}):
            answer = httpx2.post(url, json=body, headers=headers, timeout=DEADLINE)
            assert answer.status_code == 401


async def test_without_the_mcp_route_dispatch_to_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    runtime = FakeRuntime()
    async with open_service(warm=False, reattach=False, runtime=runtime,
                            gateway_host="127.0.0.1") as service:
        with pytest.raises(Exception, match="does not serve nested dispatch"):
            service.check(RunRequest(agent="a", task="x"))


async def test_a_parents_timeout_cancels_the_child(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as kit:
        with anyio.fail_after(DEADLINE):
            result = await kit.service.run(RunRequest(
                agent="a", task=nest("dispatch", agent="b", task=BLOCK), timeout=2.0))
        assert result.exit_reason == "timeout", result
        [child] = kit.children(result.run_id)
        with anyio.fail_after(2.0):
            while kit.state.get_run(child.run_id).status != "finished":
                await anyio.sleep(0.02)
        record = kit.state.get_run(child.run_id)
        assert record.exit_reason == "cancelled"
        assert result.run_id in (record.error or "")


async def test_parallel_children_share_the_callers_root(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as kit:
        result = await kit.run("a", nest("dispatch_parallel", dispatches=[
            {"agent": "b", "task": "[[reply: one]]"}, {"agent": "b", "task": "[[reply: two]]"}]))
        answers = json.loads(result.result)["results"]
        assert [a["result"] for a in answers] == ["one", "two"]
        assert {(a["parent_run_id"], a["depth"]) for a in answers} == {(result.run_id, 1)}
        root = kit.state.get_run(result.run_id).root_id
        assert {c.root_id for c in kit.children(result.run_id)} == {root}
        refused = await kit.run("a", nest("dispatch_parallel", dispatches=[
            {"agent": "b", "task": "[[reply: x]]"}], aggregate="d"))
        assert "dispatch_to" in refused.result and kit.children(refused.run_id) == []
