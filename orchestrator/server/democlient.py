"""The MCP half of `ad-sandbox demo`: a real MCP client driving `ad-sandbox serve` over stdio,
the way Claude Code does."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

DEADLINE_S = 300.0


def _body(result: Any) -> dict[str, Any]:
    if result.structured_content is not None:
        return dict(result.structured_content)
    return dict(json.loads(result.content[0].text))


async def _tour(say: Callable[[str], None], tasks: list[tuple[str, str]]) -> bool:
    """``tasks[0]`` is dispatched alone (twice: the second is a cache hit), the rest in
    parallel."""
    server = StdioServerParameters(
        command=str(Path(sys.executable).with_name("ad-sandbox")), args=["serve"],
        env=dict(os.environ),
    )

    async def show(progress: float, total: float | None, message: str | None) -> None:
        say(f"    … {message}")

    with anyio.fail_after(DEADLINE_S):
        async with Client(server) as client:
            tools = (await client.list_tools()).tools
            say(f"  connected: {len(tools)} tools ({', '.join(t.name for t in tools[:5])}, …)")
            agents = _body(await client.call_tool("list_agents", {}))["agents"]
            say("  list_agents: " + ", ".join(f"{a['name']} ({a['description']})"
                                            for a in agents))
            agent, task = tasks[0]
            say(f"  dispatch {agent}: {task!r}")
            one = _body(await client.call_tool("dispatch", {"agent": agent, "task": task},
                                               progress_callback=show))
            say(f"    → {one['result'].strip()!r} ({one['exit_reason']}, ${one['cost_usd']:.4f})")
            again = _body(await client.call_tool("dispatch", {"agent": agent, "task": task}))
            say(f"  the same dispatch again → cached: {again['cached']}, "
                f"${again['cost_usd']:.4f}, {again['duration_ms']} ms")
            say("  dispatch_parallel on both agents:")
            fan = _body(await client.call_tool("dispatch_parallel", {"dispatches": [
                {"agent": name, "task": text} for name, text in tasks[1:]]}))
            for result in fan["results"]:
                say(f"    {result['agent']} → {result['result'].strip()!r}")
            status = _body(await client.call_tool("sandbox_status", {}))
            say(f"  sandbox_status: docker {'up' if status['docker'] else 'DOWN'}, "
                f"daily budget left ${status['budget']['daily']:.2f}")
            return (bool(one["success"]) and bool(again["cached"])
                    and all(r["success"] for r in fan["results"]))


def mcp_tour(say: Callable[[str], None], tasks: list[tuple[str, str]]) -> bool:
    """True when every call through MCP succeeded."""
    return anyio.run(_tour, say, tasks)
