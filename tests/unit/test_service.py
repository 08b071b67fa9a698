"""The real Service over the fake runtime (tests/servicekit.py): runs, jobs, results by
reference, agents, cache and status — what the MCP server and the CLI call."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from orchestrator.dispatch import AgentArgs
from orchestrator.dispatch.checks import MAX_PROMPT_CHARS
from orchestrator.dispatch.service import GC_AFTER_S
from orchestrator.errors import AgentNotFound, PermissionDenied, RunNotFound, UsageError
from orchestrator.models import RunRecord, RunRequest
from orchestrator.results import ProgressUpdate
from tests.servicekit import BLOCK, DEADLINE, Kit, open_kit, use_home

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


# --- runs ------------------------------------------------------------------------------


async def test_dispatch_runs_and_reports_progress(kit: Kit) -> None:
    updates: list[ProgressUpdate] = []

    async def record(update: ProgressUpdate) -> None:
        updates.append(update)

    result = await kit.service.dispatch(RunRequest(agent="alpha", task="[[reply: hi]]"),
                                        progress=record)
    assert result.success and result.result == "hi" and result.exit_reason == "completed"
    assert result.ref is None and result.cost_usd > 0
    assert updates and {u.run_id for u in updates} == {result.run_id}
    assert kit.state.get_run(result.run_id).status == "finished"


async def test_json_answers_are_parsed(kit: Kit) -> None:
    result = await kit.service.dispatch(RunRequest(
        agent="alpha", task='[[reply: {"task": "t"}]]', response_format="json"))
    assert result.parsed_result == {"task": "t"}


async def test_return_ref_then_fetch_result(kit: Kit) -> None:
    result = await kit.service.dispatch(RunRequest(agent="alpha", task="[[reply: long answer]]"),
                                        return_ref=True, summary_chars=4)
    assert result.ref == result.run_id and result.result == "long"
    assert await kit.service.fetch_result(result.ref, None) == "long answer"
    assert await kit.service.fetch_result(result.ref, 6) == "long a"
    assert await kit.service.fetch_result(result.ref[:8], 4) == "long"  # a prefix will do
    with pytest.raises(RunNotFound):
        await kit.service.fetch_result("missing", None)


async def test_fetch_result_of_a_failed_run_is_its_error(kit: Kit) -> None:
    result = await kit.service.dispatch(RunRequest(agent="alpha", task="[[status: 429]]"))
    assert not result.success and result.error_type == "usage_limit"
    assert await kit.service.fetch_result(result.run_id, None) == result.error


async def test_fetch_result_of_a_running_job_is_refused(kit: Kit) -> None:
    job = await kit.service.start_async(RunRequest(agent="alpha", task=BLOCK))
    with pytest.raises(UsageError, match="has not finished") as info:
        await kit.service.fetch_result(job, None)
    assert "dispatch_wait" in info.value.hint


async def test_the_context_limit_is_the_dispatchers(kit: Kit) -> None:
    """One limit for task + context + goal, the dispatcher's: nothing recorded runs."""
    context = "c" * (MAX_PROMPT_CHARS - len("t") + 1)
    with pytest.raises(UsageError, match="the limit is"):
        await kit.service.dispatch(RunRequest(agent="alpha", task="t", context=context))
    with pytest.raises(UsageError, match="the limit is"):
        await kit.service.start_async(RunRequest(agent="alpha", task="t", goal=context))
    assert kit.execs() == []


@pytest.mark.parametrize(("request_", "error", "match"), [
    (RunRequest(agent="nobody", task="t"), AgentNotFound, "unknown agent"),
    (RunRequest(agent="alpha", task="  "), UsageError, "task is empty"),
    (RunRequest(agent="alpha", task="t", group="nope"), AgentNotFound, "unknown group"),
])
async def test_bad_requests_are_refused_and_recorded(
    kit: Kit, request_: RunRequest, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await kit.service.dispatch(request_)
    record = kit.state.list_runs(agent=request_.agent)[0]
    assert record.status == "finished" and not record.success
    assert kit.execs() == []


async def test_a_group_puts_its_shared_context_in_the_prompt(kit: Kit) -> None:
    result = await kit.service.dispatch(RunRequest(agent="alpha", task="t", group="team",
                                                   goal="the goal"))
    assert result.success
    assert "shared" in result.result and "the goal" in result.result  # the stub echoes


# --- jobs ------------------------------------------------------------------------------


async def test_start_async_status_wait(kit: Kit) -> None:
    job = await kit.service.start_async(RunRequest(agent="alpha", task="[[reply: done]]"))
    waited = await kit.service.wait(job, DEADLINE)
    assert waited.status == "finished" and waited.job_id == job
    assert waited.result is not None and waited.result.result == "done"
    status = await kit.service.status(job[:10])
    assert status.job_id == job and status.exit_reason == "completed"


async def test_wait_returns_at_the_deadline_then_cancel_kills(kit: Kit) -> None:
    job = await kit.service.start_async(RunRequest(agent="beta", task=BLOCK))
    assert await kit.next_run() == job
    running = await kit.service.wait(job, 0)
    assert running.status == "running" and running.result is None
    cancelled = await kit.service.cancel(job)
    assert cancelled.status == "finished" and cancelled.exit_reason == "cancelled"
    await kit.idle()
    assert kit.runtime.list_managed() == []  # the container is gone


async def test_wait_on_a_run_of_another_process_reads_its_record(kit: Kit) -> None:
    other = RunRecord(agent="alpha", status="running", owner_pid=1)
    kit.state.insert_run(other)

    async def finish_later() -> None:
        await anyio.sleep(0.2)
        kit.state.update_run(other.run_id, status="finished", success=True, result="x",
                             exit_reason="completed", finished_at=time.time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_later)
        waited = await kit.service.wait(other.run_id, DEADLINE)
    assert waited.status == "finished" and waited.result is not None


async def test_jobs_filter_by_status_and_agent(kit: Kit) -> None:
    done = await kit.service.dispatch(RunRequest(agent="alpha", task="quick"))
    slow = await kit.service.start_async(RunRequest(agent="beta", task=BLOCK))
    await kit.next_run()
    running = await kit.service.jobs(status="running", limit=10, agent=None)
    assert [j.job_id for j in running] == [slow]
    alpha = await kit.service.jobs(status=None, limit=10, agent="alpha")
    assert [j.job_id for j in alpha] == [done.run_id]
    assert len(await kit.service.jobs(status=None, limit=1, agent=None)) == 1
    with pytest.raises(UsageError, match="status must be one of"):
        await kit.service.jobs(status="exploded", limit=10, agent=None)
    with pytest.raises(UsageError, match="limit must be at least 1"):
        await kit.service.jobs(status=None, limit=0, agent=None)


@pytest.mark.parametrize("call", ["status", "cancel"])
async def test_unknown_job(kit: Kit, call: str) -> None:
    with pytest.raises(RunNotFound):
        await getattr(kit.service, call)("missing")


async def test_gc_removes_old_finished_records_only(kit: Kit) -> None:
    old = time.time() - GC_AFTER_S - 60
    stale = RunRecord(agent="alpha", status="finished", created_at=old, finished_at=old)
    kit.state.insert_run(stale)
    fresh = await kit.service.dispatch(RunRequest(agent="alpha", task="x"))
    assert await kit.service.gc() == 1
    assert [r.run_id for r in kit.state.list_runs(agent="alpha")] == [fresh.run_id]


async def test_gc_cleans_records_while_the_engine_is_away(kit: Kit) -> None:
    old = time.time() - GC_AFTER_S - 60
    kit.state.insert_run(RunRecord(agent="alpha", status="finished", created_at=old,
                                   finished_at=old))
    kit.runtime.available = False
    assert await kit.service.gc() == 1


# --- cache and status ------------------------------------------------------------------


async def test_cache_stats_and_clear(kit: Kit, home: Path) -> None:
    project = home / "projects" / "alpha"
    for args in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                                   "--allow-empty", "-m", "a"]):
        subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)
    first = await kit.service.dispatch(RunRequest(agent="alpha", task="cache me"))
    await kit.idle()
    second = await kit.service.dispatch(RunRequest(agent="alpha", task="cache me"))
    assert not first.cached and second.cached
    stats = await kit.service.cache_stats()
    assert stats["entries"] == 1
    assert await kit.service.cache_clear() == 1
    assert (await kit.service.cache_stats())["entries"] == 0
    third = await kit.service.dispatch(RunRequest(agent="alpha", task="cache me"))
    assert not third.cached


async def test_sandbox_status(kit: Kit) -> None:
    status = await kit.service.sandbox_status()
    assert status.docker and status.running == []
    assert [(p.agent, p.warm, p.target) for p in status.pool] == [("alpha", 0, 0),
                                                                   ("beta", 0, 0)]
    assert (status.budget.per_run, status.budget.per_root, status.budget.daily) == (
        1.0, 5.0, 49.5)
    spent = await kit.service.dispatch(RunRequest(agent="alpha", task="spend"))
    job = await kit.service.start_async(RunRequest(agent="beta", task=BLOCK))
    await kit.next_run()
    status = await kit.service.sandbox_status()
    assert status.budget.daily == pytest.approx(49.5 - spent.cost_usd)
    assert [(c.run_id, c.agent) for c in status.running] == [(job, "beta")]
    assert status.running[0].container_id
    kit.runtime.available = False
    assert not (await kit.service.sandbox_status()).docker


# --- agents ----------------------------------------------------------------------------


async def test_management_tools_follow_the_config(home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_kit() as kit:
        assert kit.service.management_tools_enabled()
    use_home(home, monkeypatch, management=False)
    async with open_kit() as kit:
        assert not kit.service.management_tools_enabled()


async def test_add_update_remove_agent(kit: Kit, home: Path) -> None:
    (home / "projects" / "gamma").mkdir()
    added = await kit.service.add_agent("gamma", AgentArgs(
        directory=str(home / "projects" / "gamma"), model="haiku", description="g"))
    assert (added.name, added.model, added.healthy) == ("gamma", "haiku", True)
    assert [a.name for a in await kit.service.list_agents()] == ["alpha", "beta", "gamma"]
    ran = await kit.service.dispatch(RunRequest(agent="gamma", task="[[reply: new]]"))
    assert ran.result == "new"  # the running service sees the new agent
    updated = await kit.service.update_agent("gamma", AgentArgs(description="new"))
    assert (updated.description, updated.model) == ("new", "haiku")  # the rest is kept
    await kit.service.remove_agent("beta")
    assert [a.name for a in await kit.service.list_agents()] == ["alpha", "gamma"]
    group = await kit.service.inspect_group("team")
    assert [m.agent for m in group.members] == ["alpha"]  # references go with it


@pytest.mark.parametrize(("name", "directory", "error", "match"), [
    ("alpha", "projects/alpha", UsageError, "exists"),
    ("gamma", "projects/none", UsageError, "does not exist"),
    ("gamma", "outside", PermissionDenied, "outside settings.allowed_roots"),
    ("gamma", "projects", PermissionDenied, "too broad"),
])
async def test_add_agent_refusals(kit: Kit, home: Path, name: str, directory: str,
                                  error: type[Exception], match: str) -> None:
    (home / "outside").mkdir()
    with pytest.raises(error, match=match):
        await kit.service.add_agent(name, AgentArgs(directory=str(home / directory)))
    assert len(await kit.service.list_agents()) == 2


async def test_add_agent_needs_a_directory(kit: Kit) -> None:
    with pytest.raises(UsageError, match="needs a directory"):
        await kit.service.add_agent("gamma", AgentArgs(model="haiku"))


@pytest.mark.parametrize("call", ["update", "remove"])
async def test_unknown_agent_cannot_be_changed(kit: Kit, call: str) -> None:
    with pytest.raises(AgentNotFound):
        if call == "update":
            await kit.service.update_agent("nobody", AgentArgs(model="x"))
        else:
            await kit.service.remove_agent("nobody")
