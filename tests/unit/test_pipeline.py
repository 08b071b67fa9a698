"""`run --file`: the task file, the pipeline's events, budget and exit code, its JUnit report.

The pipeline runs on the real Service over the fake runtime (tests/servicekit.py), steered
by the stub model's directives; the budget logic also on a recording fake.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from junitparser import Failure, JUnitXml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import Agent, Config, Settings
from orchestrator.dispatch import (
    PipelineResult,
    PipelineTask,
    TaskFile,
    TaskOutcome,
    junit_xml,
    load_tasks,
    run_pipeline,
)
from orchestrator.dispatch.pipeline import Spending, worst_exit_code
from orchestrator.errors import AgentNotFound, ConfigError
from orchestrator.models import RunRequest
from orchestrator.results import DispatchResult, ProgressFn, ProgressUpdate
from orchestrator.run.prepared import run_budget
from tests.servicekit import Kit, open_kit, use_home

THREE = """\
- agent: alpha
  task: "[[reply: the answer is 42]]"
  expect: "answer is \\\\d+"
- agent: beta
  task: "[[reply: hello]]"
  expect: "^goodbye"
- agent: alpha
  task: "[[reply: plain]]"
  timeout: 60
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(tmp_path: Path, text: str, name: str = "tasks.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the task file ----------------------------------------------------------------------


def test_a_task_file_is_read_with_each_task_s_line(tmp_path: Path) -> None:
    taskfile = load_tasks(write(tmp_path, THREE))
    assert [t.agent for t in taskfile.tasks] == ["alpha", "beta", "alpha"]
    assert taskfile.lines == [1, 4, 7]
    assert taskfile.tasks[2].timeout == 60 and taskfile.tasks[0].expect == "answer is \\d+"
    assert taskfile.where(1) == "tasks.yaml line 4 (task 1)"
    assert taskfile.tasks[0].title(0) == "alpha #0: [[reply: the answer is 42]]"


@pytest.mark.parametrize(("text", "message"), [
    ("- agent: a\n  task: t\n- agent: b\n  task: t\n  timeout: -5\n",
     "tasks.yaml line 5: 1.timeout: -5 — must be greater than 0"),
    ("- agent: a\n  task: t\n  expct: x\n", "tasks.yaml line 3: 0.expct — unknown key; "
     "allowed keys: agent, task, timeout, expect"),
    ("- agent: a\n  task: t\n  expect: '('\n", "tasks.yaml line 3: 0.expect: ( — not a valid "
     "regular expression"),
    ("- agent: a\n", "tasks.yaml line 1: 0.task — required key is missing"),
    ("agent: a\ntask: t\n", "tasks.yaml line 1: the top level must be a list of tasks"),
    ("[]\n", "tasks.yaml: the task list is empty"),
    ("- agent: a\n  agent: b\n  task: t\n", "tasks.yaml line 2: agent: duplicate key"),
    ("- agent: [a\n", "tasks.yaml line 2, column 1: malformed YAML"),
])
def test_a_bad_task_file_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tasks(write(tmp_path, text))
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.exit_code == 2


def test_a_bad_task_file_exits_2_before_anything_runs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    use_home(tmp_path, monkeypatch)
    path = write(tmp_path, "- agent: alpha\n  task: t\n  timeout: 0\n")
    done = CliRunner().invoke(app, ["run", "--file", str(path), "--events", "jsonl"])
    assert done.exit_code == 2
    assert "tasks.yaml line 3: 0.timeout: 0 — must be greater than 0" in done.output
    assert not (tmp_path / "state").exists() or "run_started" not in done.output


@pytest.mark.parametrize("args", [
    ["run", "--file", "x.yaml", "alpha", "task"],
    ["run", "--file", "x.yaml", "--events", "jsonl", "--json"],
    ["run", "alpha"],
    ["run", "alpha", "t", "--budget", "1", "--context", "c"],
])
def test_conflicting_arguments_are_usage_errors(args: list[str]) -> None:
    assert CliRunner().invoke(app, args).exit_code == 2


# --- the pipeline on the real service -----------------------------------------------------


@pytest.fixture
async def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kit]:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as started:
        yield started


@pytest.mark.anyio
async def test_three_tasks_one_failing_expect(kit: Kit, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    result = await run_pipeline(kit.service, load_tasks(write(tmp_path, THREE)),
                                on_event=events.append)
    assert [t.success for t in result.tasks] == [True, False, True]
    assert result.exit_code == 1
    bad = result.tasks[1]
    assert bad.exit_reason == "completed" and bad.answer == "hello" and bad.exit_code == 1
    assert bad.failure_message().startswith("completed: the answer does not match expect")
    assert result.cost_usd == pytest.approx(sum(t.cost_usd for t in result.tasks))
    json.dumps(events)  # every event is plain JSON
    for index in range(3):
        kinds = [e["event"] for e in events if e.get("index") == index]
        assert kinds[0] == "run_started" and kinds[-1] == "finished", kinds
        assert "usage" in kinds and kinds.count("finished") == 1
    assert events[-1]["event"] == "summary" and events[-1]["exit_code"] == 1


@pytest.mark.anyio
async def test_a_failing_run_takes_its_exit_code(kit: Kit, tmp_path: Path) -> None:
    text = "- agent: alpha\n  task: ok\n- agent: beta\n  task: '[[status: 429]]'\n"
    result = await run_pipeline(kit.service, load_tasks(write(tmp_path, text)))
    assert result.tasks[0].success and not result.tasks[1].success
    assert result.exit_code == result.tasks[1].exit_code == 3  # the usage limit: a limit hit


@pytest.mark.anyio
async def test_an_unknown_agent_stops_everything_before_it_runs(kit: Kit,
                                                                tmp_path: Path) -> None:
    text = "- agent: alpha\n  task: ok\n- agent: nobody\n  task: ok\n"
    with pytest.raises(AgentNotFound) as caught:
        await run_pipeline(kit.service, load_tasks(write(tmp_path, text)))
    assert caught.value.message.startswith("tasks.yaml line 3 (task 1), agent 'nobody'")
    assert kit.state.list_runs(limit=10) == []


# --- the invocation's budget ------------------------------------------------------------


class Recorder:
    """Runs nothing: each request answers with ``cost`` after one usage update."""

    def __init__(self, cost: float, concurrency: int = 1) -> None:
        self.cost = cost
        self.requests: list[RunRequest] = []
        self.config = Config(settings=Settings(max_concurrency=concurrency),
                             agents={"a": Agent(directory="/nonexistent")})

    def check(self, request: RunRequest) -> None:
        self.config.agent(request.agent)

    async def run(self, req: RunRequest, *, progress: ProgressFn | None = None
                  ) -> DispatchResult:
        self.requests.append(req)
        if progress is not None:
            await progress(ProgressUpdate(run_id="r", agent=req.agent, elapsed_s=0,
                                          state="running", cost_usd=self.cost / 2))
        return DispatchResult(agent=req.agent, success=True, result="ok", cost_usd=self.cost,
                              run_id="r", exit_reason="completed")


def tasks(n: int) -> TaskFile:
    return TaskFile(path=Path("t.yaml"), lines=[],
                    tasks=[PipelineTask(agent="a", task=f"task {i}") for i in range(n)])


@pytest.mark.anyio
async def test_the_budget_caps_each_run_and_stops_new_ones() -> None:
    runs = Recorder(cost=0.4)
    events: list[dict[str, Any]] = []
    result = await run_pipeline(runs, tasks(4), budget_usd=1.0,
                                on_event=events.append)
    caps = [r.max_budget_usd for r in runs.requests]
    assert caps == pytest.approx([1.0, 0.6, 0.2])
    assert [t.started for t in result.tasks] == [True, True, True, False]
    skipped = result.tasks[3]
    assert skipped.exit_reason == "budget" and skipped.exit_code == 3
    assert "budget $1.00 is spent" in (skipped.error or "")
    assert result.exit_code == 3
    assert [e["event"] for e in events if e.get("index") == 3] == ["finished"]


@pytest.mark.anyio
async def test_no_budget_no_cap() -> None:
    runs = Recorder(cost=5.0, concurrency=4)
    result = await run_pipeline(runs, tasks(3))
    assert result.exit_code == 0 and [r.max_budget_usd for r in runs.requests] == [None] * 3


def test_spending_counts_runs_in_flight() -> None:
    spending = Spending(1.0)
    assert spending.start(0) == 1.0
    spending.running(0, 0.25)
    assert spending.start(1) == pytest.approx(0.75)
    spending.done(0, 0.3)
    assert spending.spent == pytest.approx(0.3)


def test_a_request_cap_lowers_the_run_budget() -> None:
    config = Config(agents={"a": Agent(directory="/x", max_budget_usd=0.5)})
    agent = config.agents["a"]
    assert run_budget(config, agent) == 0.5
    assert run_budget(config, agent, RunRequest(agent="a", task="t", max_budget_usd=0.2)) == 0.2
    assert run_budget(config, agent, RunRequest(agent="a", task="t", max_budget_usd=3)) == 0.5


def test_the_worst_exit_code_decides() -> None:
    assert worst_exit_code([0, 1, 4, 3]) == 4
    assert worst_exit_code([]) == 0


# --- JUnit ------------------------------------------------------------------------------


def outcome(index: int, **fields: Any) -> TaskOutcome:
    base: dict[str, Any] = dict(index=index, agent="alpha", name=f"alpha #{index}: do it",
                                task="do it", started=True, success=True,
                                exit_reason="completed", answer="fine", cost_usd=0.0123,
                                duration_ms=1500, run_id=f"run{index}")
    return TaskOutcome(**{**base, **fields})


def test_junit_one_case_per_task_failures_with_reason_and_hint(tmp_path: Path) -> None:
    result = PipelineResult(tasks=[
        outcome(0),
        outcome(1, success=False, exit_reason="timeout", error_type="timeout",
                error="killed at 60 s", hint="give it longer", answer="partial \x1b[0m"),
        outcome(2, started=False, success=False, exit_reason="budget", error_type="budget",
                error="not started", hint="raise --budget", run_id="", cost_usd=0),
    ], cost_usd=0.0246, budget_usd=1.0, exit_code=3)
    path = tmp_path / "report.xml"
    path.write_bytes(junit_xml(result))
    ET.parse(path)  # well-formed
    suites = JUnitXml.fromfile(str(path))
    cases = [case for suite in suites for case in suite]
    assert [c.name for c in cases] == ["alpha #0: do it", "alpha #1: do it", "alpha #2: do it"]
    assert cases[0].is_passed
    failure = cases[1].result[0]
    assert isinstance(failure, Failure)
    assert failure.message == "timeout: give it longer" and failure.text == "killed at 60 s"
    assert "partial" in (cases[1].system_out or "") and "cost_usd: 0.012300" in (
        cases[1].system_out or "")
    assert cases[2].result[0].message == "budget: raise --budget"
    assert cases[0].time == pytest.approx(1.5)


@pytest.mark.anyio
async def test_the_gateway_enforces_a_request_s_cap(kit: Kit) -> None:
    capped = await kit.service.run(RunRequest(agent="alpha", task="[[reply: hi]]",
                                              max_budget_usd=0.000001))
    assert not capped.success and capped.exit_reason == "budget", capped
    free = await kit.service.run(RunRequest(agent="alpha", task="[[reply: hi again]]"))
    assert free.success
