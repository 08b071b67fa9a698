"""The server answers the MCP handshake before its service is open (issue 11): tool calls
and the tool list wait for the service; a service that cannot open makes every tool call a
clear error result, and the server goes on serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from orchestrator.dispatch import DispatchService
from orchestrator.errors import UsageError
from orchestrator.server import create_server
from tests.servicekit import Kit, kit_factory, use_home

pytestmark = pytest.mark.anyio
DEADLINE = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_home(tmp_path, monkeypatch)


def error_body(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error
    block = result.content[0]
    assert isinstance(block, TextContent)
    body = json.loads(block.text)
    assert isinstance(body, dict)
    return body


async def test_the_handshake_does_not_wait_for_the_service(home: Path) -> None:
    release = anyio.Event()
    kits: list[Kit] = []
    inner = kit_factory(kits)

    @asynccontextmanager
    async def slow() -> AsyncIterator[DispatchService]:
        await release.wait()
        async with inner() as service:
            yield service

    answers: list[CallToolResult] = []
    with anyio.fail_after(DEADLINE):  # a handshake waiting for the service never ends
        async with Client(create_server(slow)) as client:
            assert not kits, "the service opened before the handshake"

            async def call() -> None:
                answers.append(await client.call_tool("sandbox_status", {}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await anyio.wait_all_tasks_blocked()
                assert not answers, "a tool answered before the service was open"
                release.set()
            assert len(kits) == 1
            assert not answers[0].is_error, answers[0].content
            # Management tools (on in this home) are listed once the service is open.
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"add_agent", "dispatch"} <= names


async def test_a_service_that_cannot_open_makes_every_call_a_clear_error(home: Path) -> None:
    @asynccontextmanager
    async def broken() -> AsyncIterator[DispatchService]:
        raise UsageError("the state directory is not writable", hint="Fix its permissions.")
        yield  # pragma: no cover  (an async generator that fails before yielding)

    with anyio.fail_after(DEADLINE):
        async with Client(create_server(broken)) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "dispatch" in names and "add_agent" not in names
            for tool in ("list_agents", "sandbox_status"):
                body = error_body(await client.call_tool(tool, {}))
                assert body["error"] == "the state directory is not writable"
                assert body["error_type"] == UsageError("x").error_type
                assert body["hint"] == "Fix its permissions."
            dispatched = await client.call_tool("dispatch", {"agent": "alpha", "task": "hi"})
            assert dispatched.is_error
            assert "the state directory is not writable" in str(dispatched.content)


async def test_a_call_that_waits_too_long_fails_alone(
    home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("orchestrator.server.results.SERVICE_OPEN_S", 0.05)
    release = anyio.Event()
    inner = kit_factory()

    @asynccontextmanager
    async def slow() -> AsyncIterator[DispatchService]:
        await release.wait()
        async with inner() as service:
            yield service

    with anyio.fail_after(DEADLINE):
        async with Client(create_server(slow)) as client:
            body = error_body(await client.call_tool("sandbox_status", {}))
            assert "did not open within" in body["error"]
            monkeypatch.setattr("orchestrator.server.results.SERVICE_OPEN_S", DEADLINE)
            release.set()
            later = await client.call_tool("sandbox_status", {})
            assert not later.is_error, later.content
