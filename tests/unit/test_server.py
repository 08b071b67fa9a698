"""The MCP server over the real Service on the fake runtime, through a real in-process
mcp.Client (tests/servicekit.py: the gateway, stub model and records are real; only the
container is simulated). One test replaces a method of the service: a crash inside it (a
bug) cannot be produced through the real service, which records every run's failure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent
from typer.testing import CliRunner

import orchestrator.cli.serve  # noqa: F401  (registers the command)
from orchestrator.cli.app import app
from orchestrator.results import ProgressUpdate
from orchestrator.server import BearerAuth, check_bind, create_server, http_app
from tests.servicekit import BLOCK, Kit, kit_factory, use_home

pytestmark = pytest.mark.anyio
DEADLINE = 10

BASE_TOOLS = {
    "dispatch", "dispatch_session", "dispatch_parallel", "dispatch_stream", "dispatch_dialogue",
    "dispatch_async", "dispatch_status", "dispatch_wait", "dispatch_cancel", "dispatch_jobs",
    "fetch_result", "dispatch_gc", "list_agents", "inspect_agent", "list_groups",
    "inspect_group", "cache_stats", "cache_clear", "sandbox_status",
}
RUN_TOOLS = {"dispatch", "dispatch_stream", "dispatch_session"}
MANAGEMENT = {"add_agent", "update_agent", "remove_agent"}
READ_ONLY = {
    "dispatch_status", "dispatch_wait", "dispatch_jobs", "fetch_result", "list_agents",
    "inspect_agent", "list_groups", "inspect_group", "cache_stats", "sandbox_status",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Agents alpha and beta, group team, management tools on (tests/servicekit.py)."""
    return use_home(tmp_path, monkeypatch)


@asynccontextmanager
async def connect(**options: Any) -> AsyncIterator[tuple[Client, Kit]]:
    """A client of a server whose lifespan opened the real service; and that service."""
    kits: list[Kit] = []
    async with Client(create_server(kit_factory(kits)), **options) as client:
        await client.list_tools()  # waits for the service, which opens after the handshake
        yield client, kits[0]


def data(result: CallToolResult) -> dict[str, Any]:
    body = result.structured_content
    assert isinstance(body, dict), result.content
    return body


def error_body(result: CallToolResult) -> dict[str, Any]:
    """The error fields, from the text every client reads."""
    assert result.is_error
    block = result.content[0]
    assert isinstance(block, TextContent)
    body = json.loads(block.text)
    assert isinstance(body, dict)
    return body


async def still_serving(client: Client) -> None:
    result = await client.call_tool("list_agents", {})
    assert not result.is_error
    assert [a["name"] for a in data(result)["agents"]][:2] == ["alpha", "beta"]


# --- listing -----------------------------------------------------------------------


async def test_lists_every_tool_with_annotations_and_output_schema(home: Path) -> None:
    async with connect() as (client, _):
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == BASE_TOOLS | MANAGEMENT
    for name, tool in tools.items():
        assert tool.annotations is not None, name
        assert tool.annotations.read_only_hint is (name in READ_ONLY), name
        assert tool.output_schema is not None and tool.output_schema["properties"], name
        assert tool.description, name
    assert tools["dispatch_cancel"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert set(tools["dispatch"].input_schema["required"]) == {"agent", "task"}
    assert "success" in tools["dispatch"].output_schema["properties"]  # type: ignore[index]


async def test_management_tools_absent_when_disabled(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch, management=False)
    (tmp_path / "projects" / "gamma").mkdir()
    async with connect() as (client, kit):
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool(
            "add_agent", {"name": "gamma", "directory": str(tmp_path / "projects" / "gamma")})
        agents = [a.name for a in await kit.service.list_agents()]
    assert names == BASE_TOOLS
    assert result.is_error
    assert agents == ["alpha", "beta"]


# --- successful calls ----------------------------------------------------------------


async def test_dispatch_sends_progress_and_returns_structured_result(home: Path) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with connect() as (client, kit):
        result = await client.call_tool(
            "dispatch", {"agent": "alpha", "task": "--version", "goal": "the-goal",
                         "timeout_seconds": 5},
            progress_callback=on_progress,
        )
        record = kit.state.get_run(data(result)["run_id"])
    assert not result.is_error
    assert data(result)["success"] is True
    # The stub echoes the prompt: the task and the goal reached the agent as text.
    assert "--version" in data(result)["result"] and "the-goal" in data(result)["result"]
    assert (record.task, record.timeout_s) == ("--version", 5)
    assert messages and all(m.startswith("alpha: ") for m in messages)
    assert all(" tok, $" in m for m in messages if ": queued" not in m)


async def test_progress_reaches_a_json_rpc_client(home: Path) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with connect(mode="legacy") as (client, _):
        result = await client.call_tool(
            "dispatch_stream", {"agent": "beta", "task": "[[sleep: 0.3]] t"},
            progress_callback=on_progress,
        )
    assert data(result)["agent"] == "beta"
    assert messages and all(m.startswith("beta: ") for m in messages)


def test_a_progress_message_names_tokens_cost_and_the_last_action() -> None:
    """What the client's progress callback reads (the run above shows only text, no tool)."""
    update = ProgressUpdate(run_id="r", agent="alpha", elapsed_s=3.2, state="running",
                            last_action="Read(README.md)", input_tokens=10, output_tokens=5,
                            cost_usd=0.001)
    assert update.message() == "alpha: running 3s, 10+5 tok, $0.0010 — Read(README.md)"


CALLS: list[tuple[str, dict[str, Any], str, Any]] = [
    ("dispatch", {"agent": "alpha", "task": '[[reply: {"task": "t"}]]',
                  "response_format": "json"}, "parsed_result", {"task": "t"}),
    ("dispatch", {"agent": "alpha", "task": "t", "group": "team"}, "success", True),
    ("dispatch_stream", {"agent": "alpha", "task": "[[reply: ok\nSTATUS: done]]"},
     "outcome", "done"),
    ("dispatch_session", {"agent": "alpha", "task": "t", "session_id": "s1"}, "session_id", "s1"),
    ("dispatch_dialogue", {"requester": "alpha", "responder": "beta",
                           "topic": "[[reply: agreed\n[RESOLVED] ]]"}, "resolved", True),
    ("inspect_agent", {"name": "alpha", "preview_lines": 2}, "preview", "line 0\nline 1\n"),
    ("list_groups", {}, "groups", [{"name": "team", "description": "both",
                                    "members": ["alpha", "beta"]}]),
    ("inspect_group", {"name": "team"}, "shared_context", "shared"),
    ("cache_stats", {}, "stats", {"entries": 0, "hits": 0, "misses": 0, "expired": 0,
                                  "hit_rate": 0.0}),
    ("cache_clear", {}, "removed", 0),
    ("dispatch_gc", {}, "removed", 0),
    ("dispatch_jobs", {}, "jobs", []),
    ("add_agent", {"name": "gamma", "directory": "{projects}/gamma", "model": "haiku"},
     "model", "haiku"),
    ("update_agent", {"name": "beta", "description": "new"}, "description", "new"),
    ("remove_agent", {"name": "beta"}, "removed", True),
]


@pytest.mark.parametrize(("tool", "args", "key", "expected"), CALLS)
async def test_tool_returns_structured_result(
    home: Path, tool: str, args: dict[str, Any], key: str, expected: Any
) -> None:
    (home / "projects" / "gamma").mkdir()
    args = {k: v.replace("{projects}", str(home / "projects")) if isinstance(v, str) else v
            for k, v in args.items()}
    async with connect() as (client, _):
        result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert data(result)[key] == expected


async def test_sandbox_status(home: Path) -> None:
    async with connect() as (client, _):
        status = data(await client.call_tool("sandbox_status", {}))
    assert status["docker"] is True
    assert status["budget"] == {"per_run": 1.0, "per_root": 5.0, "daily": 49.5}
    assert [p["agent"] for p in status["pool"]] == ["alpha", "beta"]


async def test_group_reaches_the_request(home: Path) -> None:
    async with connect() as (client, _):
        result = await client.call_tool("dispatch", {"agent": "alpha", "task": "t",
                                                     "group": "team"})
    assert "shared" in data(result)["result"]  # the group's shared context is in the prompt


async def test_cache_stats_and_clear_count_entries(home: Path) -> None:
    async with connect() as (client, kit):
        kit.state.cache_put("key", "run", 60)
        stats = data(await client.call_tool("cache_stats", {}))["stats"]
        cleared = data(await client.call_tool("cache_clear", {}))
    assert stats["entries"] == 1 and cleared["removed"] == 1


async def test_return_ref_then_fetch_result(home: Path) -> None:
    async with connect() as (client, _):
        first = data(await client.call_tool(
            "dispatch", {"agent": "alpha", "task": "[[reply: done: long]]", "return_ref": True,
                         "summary_chars": 3}
        ))
        args = {"ref": first["ref"], "max_chars": 7}
        fetched = data(await client.call_tool("fetch_result", args))
    assert first["result"] == "don"
    assert fetched == {"ref": first["ref"], "text": "done: l"}


async def test_parallel_keeps_input_order_and_aggregates(home: Path) -> None:
    dispatches = [{"agent": "beta", "task": f"[[reply: t{i}]]"} for i in range(4)]
    async with connect() as (client, _):
        result = await client.call_tool(
            "dispatch_parallel", {"dispatches": dispatches, "aggregate": "alpha"}
        )
    body = data(result)
    assert [r["result"] for r in body["results"]] == [f"t{i}" for i in range(4)]
    assert body["aggregate"]["agent"] == "alpha"
    assert not result.is_error


async def test_parallel_is_validated_before_anything_runs(home: Path) -> None:
    dispatches = [{"agent": "alpha", "task": "t"}, {"agent": "nobody", "task": "t"}]
    async with connect() as (client, kit):
        result = await client.call_tool("dispatch_parallel", {"dispatches": dispatches})
        assert error_body(result)["error_type"] == "not_found"
        assert result.structured_content is None  # an error is not a ParallelResult
        assert kit.execs() == [] and kit.state.list_runs() == []


async def test_async_job_wait_status_jobs_cancel(home: Path) -> None:
    async with connect() as (client, kit):
        job = data(await client.call_tool(
            "dispatch_async", {"agent": "alpha", "task": "[[reply: done: quick]]"}))
        waited = data(await client.call_tool(
            "dispatch_wait", {"job_id": job["job_id"], "timeout_seconds": DEADLINE}
        ))
        assert waited["status"] == "finished"
        assert waited["result"]["result"] == "done: quick"
        status = data(await client.call_tool("dispatch_status", {"job_id": job["job_id"]}))
        assert status["job_id"] == job["job_id"]

        slow = data(await client.call_tool("dispatch_async", {"agent": "beta", "task": BLOCK}))
        assert await kit.next_run() == slow["job_id"]
        running = data(await client.call_tool(
            "dispatch_wait", {"job_id": slow["job_id"], "timeout_seconds": 0}
        ))
        assert running["status"] == "running"
        listed = data(await client.call_tool("dispatch_jobs", {"status": "running"}))
        assert [j["job_id"] for j in listed["jobs"]] == [slow["job_id"]]
        cancelled = data(await client.call_tool("dispatch_cancel", {"job_id": slow["job_id"]}))
        assert cancelled["exit_reason"] == "cancelled"
        await kit.idle()
        assert kit.runtime.list_managed() == []  # its container was killed and removed
        gc = data(await client.call_tool("dispatch_gc", {}))
    assert gc["removed"] == 0  # both records are younger than the retention


# --- errors ----------------------------------------------------------------------------

HUGE = "x" * (1024 * 1024)
BAD_CALLS: list[tuple[str, dict[str, Any], str | None]] = [
    ("dispatch", {"agent": "nobody", "task": "t"}, "not_found"),
    ("dispatch", {"agent": "alpha", "task": "   "}, "bad_request"),
    ("dispatch", {"agent": "alpha", "task": "t", "context": HUGE}, "bad_request"),
    ("dispatch", {"agent": 3, "task": ["t"]}, None),
    ("dispatch", {"agent": "alpha"}, None),
    ("dispatch", {"agent": "alpha", "task": "t", "response_format": "xml"}, None),
    ("dispatch", {"agent": "alpha", "task": "t", "timeout_seconds": -1}, None),
    ("dispatch_stream", {"agent": "nobody", "task": "t"}, "not_found"),
    ("dispatch_session", {"agent": "alpha", "task": "t", "session_id": ""}, None),
    ("dispatch_session", {"agent": "nobody", "task": "t", "session_id": "s"}, "not_found"),
    ("dispatch_parallel", {"dispatches": []}, None),
    ("dispatch_parallel", {"dispatches": "nope"}, None),
    ("dispatch_parallel", {"dispatches": [{"agent": "alpha", "task": "t"}],
                           "aggregate": "nobody"}, "not_found"),
    ("dispatch_dialogue", {"requester": "alpha", "responder": "beta", "topic": "x",
                           "max_rounds": 11}, None),
    ("dispatch_dialogue", {"requester": "alpha", "responder": "nobody", "topic": "x"},
     "not_found"),
    ("dispatch_async", {"agent": "nobody", "task": "t"}, "not_found"),
    ("dispatch_async", {"agent": "alpha", "task": ""}, "bad_request"),
    ("dispatch_status", {"job_id": "missing"}, "not_found"),
    ("dispatch_status", {"job_id": 5}, None),
    ("dispatch_wait", {"job_id": "missing", "timeout_seconds": 1}, "not_found"),
    ("dispatch_wait", {"job_id": "j", "timeout_seconds": "soon"}, None),
    ("dispatch_cancel", {"job_id": "missing"}, "not_found"),
    ("dispatch_jobs", {"status": "exploded"}, None),
    ("dispatch_jobs", {"limit": 0}, None),
    ("fetch_result", {"ref": "missing"}, "not_found"),
    ("fetch_result", {"ref": "r", "max_chars": 0}, None),
    ("inspect_agent", {"name": "nobody"}, "not_found"),
    ("inspect_agent", {"name": "alpha", "preview_lines": -1}, None),
    ("inspect_group", {"name": "nope"}, "not_found"),
    ("inspect_group", {}, None),
    ("add_agent", {"name": "alpha", "directory": "/p"}, "bad_request"),
    ("add_agent", {"name": "gamma", "directory": "/"}, "permission"),
    ("add_agent", {"name": "n", "directory": "/p", "mount": "rwx"}, None),
    ("update_agent", {"name": "nobody", "model": "x"}, "not_found"),
    ("update_agent", {"name": "alpha", "timeout": 0}, None),
    ("remove_agent", {"name": "nobody"}, "not_found"),
    ("no_such_tool", {}, None),
]


@pytest.mark.parametrize(("tool", "args", "error_type"), BAD_CALLS)
async def test_bad_call_is_an_error_result_and_the_server_keeps_serving(
    home: Path, tool: str, args: dict[str, Any], error_type: str | None
) -> None:
    async with connect() as (client, _):
        result = await client.call_tool(tool, args)
        assert result.is_error, result.content
        if error_type is not None:
            body = error_body(result)
            assert body["error_type"] == error_type
            assert body["hint"] and body["error"]
            assert body["success"] is False
            if tool in RUN_TOOLS:  # refused runs keep dispatch's outputSchema
                assert data(result)["agent"] == args["agent"]
                assert data(result)["error_type"] == error_type
            else:
                assert result.structured_content is None
        await still_serving(client)


@pytest.mark.parametrize(
    "tool", ["dispatch_gc", "list_agents", "list_groups", "cache_stats", "cache_clear",
             "sandbox_status"],
)
async def test_tools_without_parameters_ignore_unknown_arguments(home: Path, tool: str) -> None:
    async with connect() as (client, _):
        result = await client.call_tool(tool, {"unexpected": [1, {"x": None}]})
        assert not result.is_error, result.content
        await still_serving(client)


async def test_failed_run_is_error_and_keeps_structured_fields(home: Path) -> None:
    async with connect() as (client, _):
        result = await client.call_tool("dispatch", {"agent": "alpha",
                                                     "task": "[[status: 429]]"})
        assert result.is_error
        assert data(result)["success"] is False
        assert data(result)["error_type"] == "usage_limit"
        assert data(result)["run_id"]
        await still_serving(client)


async def test_a_crash_in_the_service_is_an_error_result(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one fake left: the real service turns every failure of a run into a recorded
    result, so a bug that escapes it is simulated by replacing its dispatch."""

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("fake bug")

    async with connect() as (client, kit):
        monkeypatch.setattr(kit.service, "dispatch", boom)
        result = await client.call_tool("dispatch", {"agent": "alpha", "task": "t"})
        assert result.is_error
        assert "RuntimeError: fake bug" in error_body(result)["error"]
        await still_serving(client)


# --- cancellation ----------------------------------------------------------------------


async def test_notifications_cancelled_kills_the_run(home: Path) -> None:
    """legacy: the client's cancel goes out as notifications/cancelled over JSON-RPC. The
    service lets an abandoned dispatch run on, so only the server's cancel can end it."""
    async with connect(mode="legacy") as (client, kit):
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "dispatch", {"agent": "alpha", "task": BLOCK})
                run_id = await kit.next_run()
                tg.cancel_scope.cancel()
        ended = await kit.service.wait(run_id, DEADLINE)
        assert ended.status == "finished" and ended.exit_reason == "cancelled"
        await still_serving(client)


async def test_an_abandoned_call_leaves_its_run_going(home: Path) -> None:
    """auto: the in-process caller just goes away (no notifications/cancelled): the server
    does not kill the run, which goes on in the service and stays readable."""
    async with connect(mode="auto") as (client, kit):
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "dispatch", {"agent": "alpha", "task": BLOCK})
                run_id = await kit.next_run()
                tg.cancel_scope.cancel()
        await still_serving(client)
        status = await kit.service.status(run_id)
        assert status.status == "running" and kit.state.get_run(run_id).container_id


# --- HTTP guards and CLI ---------------------------------------------------------------


def test_binding_beyond_loopback_needs_a_token() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind(host, None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(Exception, match="without a bearer token") as info:
        check_bind("0.0.0.0", None)
    assert "AD_SANDBOX_MCP_TOKEN" in info.value.hint  # type: ignore[attr-defined]


def test_serve_refuses_a_public_bind_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AD_SANDBOX_MCP_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--transport", "http", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without a bearer token" in result.output


async def test_bearer_token_is_required_when_set() -> None:
    server = create_server(kit_factory())
    guarded = http_app(server, host="127.0.0.1", token="s3cret")
    assert isinstance(guarded, BearerAuth)
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:1") as http:
        missing = await http.post("/mcp", json={})
        wrong = await http.post("/mcp", json={}, headers={"Authorization": "Bearer nope"})
        # Past the guard: a path the MCP app does not serve.
        right = await http.get("/elsewhere", headers={"Authorization": "Bearer s3cret"})
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 404
