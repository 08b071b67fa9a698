"""`ad-sandbox demo`: two sample agents, real containers, the real claude, the stub model.

Offline by default (``upstream: stub``); with ``ANTHROPIC_API_KEY`` set it uses the real API
and plain-language tasks. It keeps its own config and projects under the state dir, so a
user's agents file is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from orchestrator.config import Agent, Config, EnvSource, ModelApi, Settings
from orchestrator.configfile import save_config
from orchestrator.dispatch import open_command_service
from orchestrator.models import RunRequest
from orchestrator.paths import CONFIG_ENV, state_dir
from orchestrator.results import DispatchResult
from orchestrator.server.agentmcp import agent_mcp_routes

CALC = '''import sys

a, b = (int(x) for x in sys.argv[1:3])
print(f"{a} * {b} = {a * b}")
'''
README = "# Field notes\n\nThe demo project of ad-sandbox's `notes` agent.\nIt keeps notes.\n"


@dataclass(frozen=True)
class DemoTask:
    agent: str
    offline: str
    online: str


TASKS = (
    DemoTask("notes", "[[bash: head -n 1 README.md; id -u; ls /workspace; ls /home]]",
             "Read README.md and say in one sentence what this project is."),
    DemoTask("calc", "[[bash: python3 calc.py 6 7]]",
             "Run `python3 calc.py 6 7` and report its output."),
)
MCP_TASKS = (
    DemoTask("calc", "[[bash: sleep 2; python3 calc.py 12 12]]",
             "Run `python3 calc.py 12 12` and report its output."),
    DemoTask("notes", "[[bash: wc -l README.md]]", "How many lines does README.md have?"),
    DemoTask("calc", "[[bash: python3 calc.py 3 5]]",
             "Run `python3 calc.py 3 5` and report its output."),
)


def demo_root() -> Path:
    return state_dir() / "demo"


DEMO_MODEL = "haiku"


def prepare(root: Path, *, online: bool) -> Path:
    """Write the demo projects and config; returns the config path."""
    notes, calc = root / "notes", root / "calc"
    for folder in (notes, calc):
        folder.mkdir(parents=True, exist_ok=True)
    (notes / "README.md").write_text(README)
    (notes / "CLAUDE.md").write_text("Answer briefly.\n")
    (calc / "calc.py").write_text(CALC)
    api = (ModelApi(upstream="https://api.anthropic.com",
                    credential=EnvSource(env="ANTHROPIC_API_KEY"))
           if online else ModelApi(upstream="stub", credential=None))
    # Haiku and a dime a run: no surprise costs with a real key. The gateway holds each
    # request's worst case before forwarding it, and one Claude Code request on an opus-priced
    # model can hold more than a dime by itself.
    config = Config(
        settings=Settings(model_api=api, default_timeout=120),
        agents={
            "notes": Agent(directory=str(notes), description="Keeps field notes",
                           model=DEMO_MODEL, max_budget_usd=0.10),
            "calc": Agent(directory=str(calc), description="Multiplies numbers",
                          model=DEMO_MODEL, max_budget_usd=0.10, mount="ro"),
        },
    )
    path = root / "agents.yaml"
    save_config(config, path)
    return path


def run_demo(say: Callable[[str], None]) -> bool:
    """Two runs from the command line's side, then the same agents through MCP; True if all
    succeeded."""
    online = bool(os.environ.get("ANTHROPIC_API_KEY"))
    path = prepare(demo_root(), online=online)
    os.environ[CONFIG_ENV] = str(path)
    say(f"model: {'the real API (ANTHROPIC_API_KEY is set)' if online else 'the offline stub'}")
    say(f"config: {path}")

    async def main() -> list[DispatchResult]:
        results = []
        async with open_command_service(agent_mcp=agent_mcp_routes) as service:
            for task in TASKS:
                text = task.online if online else task.offline
                say(f"\n$ ad-sandbox run {task.agent} {text!r}")
                result = await service.run(
                    RunRequest(agent=task.agent, task=text, caller="demo"))
                say(f"  {'ok' if result.success else 'FAILED'}: {result.result.strip()}")
                if not result.success:
                    say(f"  error: {result.error} — {result.hint}")
                say(f"  run {result.run_id}, container {str(result.container_id)[:12]}, "
                    f"exit_reason {result.exit_reason}, {result.duration_ms} ms, "
                    f"${result.cost_usd:.4f}")
                results.append(result)
        return results

    results = anyio.run(main)
    say("\nThe same agents through MCP, as Claude Code sees them (`ad-sandbox serve`):")
    from orchestrator.server.democlient import mcp_tour

    tasks = [(t.agent, t.online if online else t.offline) for t in MCP_TASKS]
    through_mcp = mcp_tour(say, tasks)
    ok = sum(r.success for r in results)
    say(f"\n{ok} of {len(results)} direct runs succeeded; "
        f"the MCP calls {'all succeeded' if through_mcp else 'FAILED'}")
    return ok == len(results) and through_mcp
