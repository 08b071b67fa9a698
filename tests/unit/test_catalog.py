"""What callers learn about agents and groups, through the real Service over the fake
runtime: previews, stacks, typical runs, and agents that cannot run (unhealthy)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.dispatch import AgentArgs
from orchestrator.errors import AgentNotFound
from orchestrator.models import RunRequest
from tests.servicekit import PREVIEW, Kit, open_kit, use_home

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_home(tmp_path, monkeypatch)


@pytest.fixture
async def kit(home: Path) -> AsyncIterator[Kit]:
    async with open_kit() as started:
        yield started


async def test_list_agents(kit: Kit, home: Path) -> None:
    agents = await kit.service.list_agents()
    assert [(a.name, a.description, a.healthy, a.problem) for a in agents] == [
        ("alpha", "alpha agent", True, None), ("beta", "beta agent", True, None)]
    assert agents[0].directory == str(home / "projects" / "alpha")


async def test_a_missing_directory_makes_an_agent_unhealthy(kit: Kit, home: Path) -> None:
    shutil.rmtree(home / "projects" / "beta")
    beta = (await kit.service.list_agents())[1]
    assert not beta.healthy and "does not exist" in (beta.problem or "")
    detail = await kit.service.inspect_agent("beta", 5)
    assert not detail.healthy and detail.preview == "" and detail.stacks == []


async def test_inspect_agent_previews_stacks_and_typical_runs(kit: Kit, home: Path) -> None:
    (home / "projects" / "alpha" / "pyproject.toml").write_text("[project]\n")
    (home / "projects" / "alpha" / "package.json").write_text("{}\n")
    ran = await kit.service.dispatch(RunRequest(agent="alpha", task="x"))
    detail = await kit.service.inspect_agent("alpha", 2)
    assert detail.preview == "line 0\nline 1\n"
    assert detail.stacks == ["node", "python"]
    assert detail.runs == 1 and detail.typical_cost_usd == pytest.approx(ran.cost_usd)
    assert detail.config["directory"] == str(home / "projects" / "alpha")
    assert (await kit.service.inspect_agent("alpha", 50)).preview == PREVIEW
    assert (await kit.service.inspect_agent("alpha", 0)).preview == ""


async def test_a_symlinked_preview_file_is_not_followed(kit: Kit, home: Path) -> None:
    project = home / "projects" / "alpha"
    (home / "secret.txt").write_text("host secret\n")
    (project / "CLAUDE.md").unlink()
    (project / "CLAUDE.md").symlink_to(home / "secret.txt")
    (project / "README.md").write_text("the readme\n")
    assert (await kit.service.inspect_agent("alpha", 5)).preview == "the readme\n"


async def test_a_swapped_directory_is_unhealthy_and_not_read(kit: Kit, home: Path) -> None:
    """An agent added over MCP is pinned to its directory; another directory put in its
    place is reported, and nothing is read from it."""
    gamma = home / "projects" / "gamma"
    gamma.mkdir()
    await kit.service.add_agent("gamma", AgentArgs(directory=str(gamma)))
    gamma.rename(home / "projects" / "gamma-old")
    gamma.mkdir()
    (gamma / "CLAUDE.md").write_text("planted\n")
    detail = await kit.service.inspect_agent("gamma", 5)
    assert not detail.healthy and detail.problem
    assert detail.preview == "" and detail.stacks == []


async def test_groups(kit: Kit) -> None:
    groups = await kit.service.list_groups()
    assert [(g.name, g.description, g.members) for g in groups] == [
        ("team", "both", ["alpha", "beta"])]
    detail = await kit.service.inspect_group("team")
    assert detail.shared_context == "shared"
    assert [(m.agent, m.use_for) for m in detail.members] == [("alpha", "a"), ("beta", "")]
    with pytest.raises(AgentNotFound, match="unknown group 'nope' \\(known: team\\)"):
        await kit.service.inspect_group("nope")


async def test_unknown_agent(kit: Kit) -> None:
    with pytest.raises(AgentNotFound):
        await kit.service.inspect_agent("nobody", 5)
