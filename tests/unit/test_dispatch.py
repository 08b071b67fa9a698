"""The dispatcher's logic over the fake runtime, with the real gateway, relay and stub.

The fake `claude` (tests/fake_claude.py) calls the gateway with its run token, so tokens,
metering, budgets, cache, deadlines, cancellation and records are all exercised for real;
only the container is simulated. tests/docker/ runs the same paths in real containers.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from orchestrator.config import Agent, Budget, Config, EnvSource, ModelApi, Pool, Settings
from orchestrator.configfile import save_config
from orchestrator.dispatch.dispatcher import Dispatcher, open_dispatcher
from orchestrator.errors import AgentNotFound, UsageError
from orchestrator.models import RunRequest
from orchestrator.results import ProgressUpdate
from orchestrator.runtime.fake import FakeExec, FakeRuntime
from orchestrator.state import StateStore
from tests.fake_claude import claude_argv, fake_claude

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "README.md").write_text("hello\n")
    return folder


def write_config(tmp_path: Path, project: Path, **settings: Any) -> None:
    agent_fields = settings.pop("agent", {})
    config = Config(
        settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                          pool=Pool(warm_per_agent=0), **settings),
        agents={"proj": Agent(directory=str(project), **agent_fields)},
    )
    save_config(config, tmp_path / "agents.yaml")


@pytest.fixture
def env(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    write_config(tmp_path, project)
    yield tmp_path


@pytest.fixture
def runtime() -> FakeRuntime:
    fake = FakeRuntime()
    fake.on_command("bash", fake_claude)
    return fake


@pytest.fixture
async def dispatcher(env: Path, runtime: FakeRuntime) -> AsyncIterator[Dispatcher]:
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "sha256:fake") as service:
        yield service


def execs(runtime: FakeRuntime) -> list[Any]:
    return [call for call in runtime.calls if call[0] == "exec"]


async def test_dispatch_runs_claude_in_a_container_and_records_it(
    dispatcher: Dispatcher, runtime: FakeRuntime
) -> None:
    result = await dispatcher.dispatch(RunRequest(agent="proj", task="say hi"))
    assert result.success, result
    assert result.result == "echo: ## Task\nsay hi"
    assert result.exit_reason == "completed"
    assert result.cost_usd > 0  # metered by the gateway from the stub's usage
    record = dispatcher.state.get_run(result.run_id)
    assert record.status == "finished" and record.container_id == result.container_id
    await dispatcher.idle()
    assert runtime.inspect(result.container_id or "") is None  # removed after the run
    _, argv, env_vars, _user, workdir, stdin_file = execs(runtime)[0][1]
    assert "say hi" not in " ".join(argv)  # the task never goes into argv
    assert argv[4] == "claude" and "< /run/ad-sandbox/prompt" in argv[2]  # prompt on stdin
    assert stdin_file is None and workdir == "/workspace"
    assert env_vars["ANTHROPIC_API_KEY"].startswith("ads-run-")


async def test_run_token_is_dead_after_the_run(dispatcher: Dispatcher,
                                               runtime: FakeRuntime) -> None:
    await dispatcher.dispatch(RunRequest(agent="proj", task="hi"))
    env_vars = execs(runtime)[0][1][2]
    response = httpx.post(f"{env_vars['ANTHROPIC_BASE_URL']}/v1/messages",
                          headers={"x-api-key": env_vars["ANTHROPIC_API_KEY"]},
                          json={"model": "m", "max_tokens": 1,
                                "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 401


async def test_a_task_starting_with_dashes_is_text(dispatcher: Dispatcher) -> None:
    result = await dispatcher.dispatch(RunRequest(agent="proj", task="--version please"))
    assert result.success and "--version please" in result.result


async def test_timeout_kills_and_records(dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    started = time.monotonic()
    result = await dispatcher.dispatch(
        RunRequest(agent="proj", task="[[sleep: 60]] slow", timeout=1))
    assert time.monotonic() - started < 5
    assert result.exit_reason == "timeout" and result.error_type == "timeout"
    assert not result.success and result.hint
    await dispatcher.idle()
    assert runtime.list_managed() == []


async def test_cancel_kills_the_container(dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    job = dispatcher.start_async(RunRequest(agent="proj", task="[[sleep: 60]] slow"))
    live = dispatcher.live(job)
    assert live is not None
    with anyio.fail_after(10):
        while live.container_id is None or not execs(runtime):
            await live.wait_change(1)
    record = await dispatcher.cancel(job)
    assert record.exit_reason == "cancelled" and record.status == "finished"
    await dispatcher.idle()
    assert runtime.list_managed() == []


async def test_caller_cancellation_cancels_the_run(dispatcher: Dispatcher) -> None:
    with anyio.move_on_after(1.5):
        await dispatcher.dispatch(RunRequest(agent="proj", task="[[sleep: 60]] x"))
    runs = dispatcher.state.list_runs(agent="proj")
    assert runs[0].exit_reason == "cancelled"


async def test_oom_is_told_apart(dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    def oom(proc: FakeExec) -> int:
        return proc.oom()

    runtime.on_command("bash", oom)
    result = await dispatcher.dispatch(RunRequest(agent="proj", task="eat memory"))
    assert result.exit_reason == "oom" and result.error_type == "oom"


async def test_crash_without_result(dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    def crash(proc: FakeExec) -> int:
        proc.err("segfault\n")
        return 139

    runtime.on_command("bash", crash)
    result = await dispatcher.dispatch(RunRequest(agent="proj", task="x"))
    assert result.exit_reason == "crashed" and "segfault" in (result.error or "")


async def test_api_error_is_a_failed_result(dispatcher: Dispatcher) -> None:
    result = await dispatcher.dispatch(RunRequest(agent="proj", task="[[status: 429]]"))
    assert not result.success and result.exit_reason == "completed"
    assert result.error_type == "usage_limit"


async def test_unknown_agent_is_an_error_and_a_record(dispatcher: Dispatcher) -> None:
    with pytest.raises(AgentNotFound, match="unknown agent 'nope'"):
        await dispatcher.dispatch(RunRequest(agent="nope", task="x"))
    record = dispatcher.state.list_runs(agent="nope")[0]
    assert record.status == "finished" and record.error_type == "not_found"


async def test_deleted_directory_is_an_error_a_record_and_no_container(
    dispatcher: Dispatcher, runtime: FakeRuntime, project: Path
) -> None:
    project.rename(project.with_name("moved"))
    with pytest.raises(UsageError, match="does not exist"):
        await dispatcher.dispatch(RunRequest(agent="proj", task="x"))
    assert dispatcher.state.list_runs(agent="proj")[0].status == "finished"
    assert runtime.list_managed() == []


@pytest.mark.parametrize(("task", "context", "match"), [
    ("   ", "", "task is empty"),
    ("x", "c" * 1_048_576, "the limit is"),
])
async def test_bad_requests(dispatcher: Dispatcher, task: str, context: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        await dispatcher.dispatch(RunRequest(agent="proj", task=task, context=context))


async def test_engine_down_is_recorded(dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    runtime.available = False
    result = await dispatcher.dispatch(RunRequest(agent="proj", task="x"))
    assert not result.success and result.error_type == "sandbox"
    assert dispatcher.state.get_run(result.run_id).status == "finished"


async def test_missing_image_is_recorded(env: Path, project: Path) -> None:
    runtime = FakeRuntime(images=set())
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: None) as service:
        result = await service.dispatch(RunRequest(agent="proj", task="x"))
    assert not result.success and "image" in (result.error or "").lower()
    assert result.hint and "image build" in result.hint


async def test_cache_hit_then_miss_after_a_commit(
    dispatcher: Dispatcher, runtime: FakeRuntime, project: Path
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "a")
    first = await dispatcher.dispatch(RunRequest(agent="proj", task="cache me"))
    second = await dispatcher.dispatch(RunRequest(agent="proj", task="cache me"))
    assert not first.cached and second.cached and second.cost_usd == 0
    assert second.result == first.result and len(execs(runtime)) == 1
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "b")
    third = await dispatcher.dispatch(RunRequest(agent="proj", task="cache me"))
    assert not third.cached and len(execs(runtime)) == 2


async def test_identical_requests_in_flight_share_one_run(
    dispatcher: Dispatcher, runtime: FakeRuntime
) -> None:
    results = []

    async def one() -> None:
        results.append(await dispatcher.dispatch(
            RunRequest(agent="proj", task="[[sleep: 1]] same")))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    assert len(execs(runtime)) == 1
    assert sorted(r.cached for r in results) == [False, True, True]


async def test_concurrency_limit_holds(env: Path, project: Path, runtime: FakeRuntime) -> None:
    write_config(env, project, max_concurrency=1)
    running = 0
    peak = 0
    original = fake_claude

    def counted(proc: FakeExec) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return original(proc)
        finally:
            running -= 1

    runtime.on_command("bash", counted)
    updates: list[ProgressUpdate] = []

    async def record(update: ProgressUpdate) -> None:
        updates.append(update)

    async with (
        open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                        image_id=lambda ref: "x") as service,
        anyio.create_task_group() as tg,
    ):
        for n in range(3):
            tg.start_soon(lambda n=n: service.dispatch(
                RunRequest(agent="proj", task=f"[[sleep: 0.5]] task {n}"),
                progress=record))
    assert peak == 1
    assert any(u.state == "queued" and u.queue_position for u in updates)


async def test_budget_refusal_ends_the_run_as_budget(env: Path, project: Path,
                                                      runtime: FakeRuntime) -> None:
    write_config(env, project, budget=Budget(per_run=0.0))
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x") as service:
        result = await service.dispatch(RunRequest(agent="proj", task="spend"))
    assert result.exit_reason == "budget" and result.budget_exceeded
    assert result.error_type == "budget"


async def test_secrets_are_files_and_redacted(env: Path, project: Path, runtime: FakeRuntime,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_TOKEN", "s3cret-value-123")
    write_config(env, project, agent={"secrets": {"TOKEN": EnvSource(env="DEMO_TOKEN")}})
    seen: dict[str, Any] = {}

    def leaky(proc: FakeExec) -> int:
        found = proc.read_file("/run/secrets/TOKEN")
        seen["file"] = found
        seen["inspect"] = runtime.raw_inspect(proc.container_id)
        # An honest run: the leaked text is what the model (the stub) really answered.
        session = claude_argv(proc)[claude_argv(proc).index("--session-id") + 1]
        answer = httpx.post(
            f"{proc.env['ANTHROPIC_BASE_URL']}/v1/messages?beta=true",
            headers={"x-api-key": proc.env["ANTHROPIC_API_KEY"],
                     "x-claude-code-session-id": session},
            json={"model": "m", "max_tokens": 10, "messages": [
                {"role": "user", "content": "[[reply: the token is s3cret-value-123]]"}]},
        ).json()
        proc.out(json.dumps({
            "type": "result", "subtype": "success", "is_error": False,
            "result": answer["content"][0]["text"], "session_id": session, "num_turns": 1,
            "total_cost_usd": 0, "usage": {"input_tokens": 1, "output_tokens": 1}}))
        return 0

    runtime.on_command("bash", leaky)
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x") as service:
        result = await service.dispatch(RunRequest(agent="proj", task="leak"))
    assert seen["file"].data == b"s3cret-value-123" and seen["file"].mode == 0o400
    assert "s3cret" not in result.result and "[redacted:TOKEN]" in result.result
    assert "s3cret" not in seen["inspect"]  # not in env, labels or command


async def test_orphaned_run_is_ended_truthfully(env: Path, runtime: FakeRuntime) -> None:
    from orchestrator.models import RunRecord

    with StateStore() as state:
        dead = RunRecord(agent="proj", status="running", owner_pid=2**22 + 7)
        state.insert_run(dead)
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x") as service:
        record = service.state.get_run(dead.run_id)
    assert record.status == "finished" and record.exit_reason == "crashed"
    assert "ended mid-run" in (record.error or "")


async def test_cancel_while_setting_up_is_a_cancel(dispatcher: Dispatcher,
                                                   runtime: FakeRuntime) -> None:
    """The cancel can land while the container is being made: still `cancelled`, and the
    container is not left behind."""
    gate = anyio.Event()
    original = runtime.create

    def slow_create(*args: Any, **kwargs: Any) -> str:
        anyio.from_thread.run_sync(gate.set)
        time.sleep(0.3)
        return original(*args, **kwargs)

    runtime.create = slow_create  # type: ignore[method-assign]
    job = dispatcher.start_async(RunRequest(agent="proj", task="x"))
    await gate.wait()
    record = await dispatcher.cancel(job)
    assert record.exit_reason == "cancelled" and record.status == "finished"
    await dispatcher.idle()
    assert runtime.list_managed() == []


async def test_cancel_while_queued_is_a_cancel(env: Path, project: Path,
                                               runtime: FakeRuntime) -> None:
    write_config(env, project, max_concurrency=1)
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x") as service:
        first = service.start_async(RunRequest(agent="proj", task="[[sleep: 30]] a"))
        holder = service.live(first)
        assert holder is not None
        with anyio.fail_after(10):
            while holder.container_id is None:
                await holder.wait_change(1)
        second = service.start_async(RunRequest(agent="proj", task="b"))
        live = service.live(second)
        assert live is not None
        with anyio.fail_after(10):
            while live.queue_position is None:
                await live.wait_change(1)
        record = await service.cancel(second)
        assert record.exit_reason == "cancelled" and "before its agent started" in (
            record.error or "")
        await service.cancel(first)
    assert len(execs(runtime)) == 1


async def test_a_stopping_server_leaves_its_runs_to_the_next_one(
    env: Path, runtime: FakeRuntime
) -> None:
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x", wait_for_runs=False) as service:
        job = service.start_async(RunRequest(agent="proj", task="[[sleep: 60]] long"))
        live = service.live(job)
        assert live is not None
        with anyio.fail_after(10):
            while not execs(runtime):
                await live.wait_change(1)
    with StateStore() as state:
        record = state.get_run(job)
    assert record.status == "running" and record.container_id  # nothing recorded as ended
    assert [c.id for c in runtime.list_managed()] == [record.container_id]  # nor killed
    runtime.remove(record.container_id)


async def test_the_run_uses_what_was_checked_not_a_later_config(
    env: Path, project: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check() returns one Prepared value; an edit of the config or of a secret's source
    after it does not reach the run (nor does the run look them up again)."""
    monkeypatch.setenv("DEMO_TOKEN", "checked-value")
    write_config(env, project, agent={"secrets": {"TOKEN": EnvSource(env="DEMO_TOKEN")},
                                      "timeout": 50})
    seen: dict[str, bytes] = {}

    def reads_secret(proc: FakeExec) -> int:
        seen["secret"] = proc.read_file("/run/secrets/TOKEN").data
        return fake_claude(proc)

    runtime.on_command("bash", reads_secret)
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x") as service:
        request = RunRequest(agent="proj", task="hi")
        prepared = service.check(request)
        assert "checked-value" not in repr(prepared)
        monkeypatch.setenv("DEMO_TOKEN", "later-value")
        write_config(env, project, agent={"secrets": {"TOKEN": EnvSource(env="DEMO_TOKEN")},
                                          "timeout": 70})
        assert service.config.agent("proj").timeout == 70
        result = await service.dispatch(request, prepared=prepared)
        record = service.state.get_run(result.run_id)
    assert result.success and seen["secret"] == b"checked-value"
    assert record.timeout_s == prepared.timeout == 50
