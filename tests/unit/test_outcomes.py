"""The one table of outcomes: every exit reason and error type has a row, the exit codes are
SPEC §8's, and errors, runner, dispatcher and CLI all read it (a cancelled run says so)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator import errors
from orchestrator.cli.runs import exit_code_for
from orchestrator.config import Agent, Config, ModelApi, Pool, Settings
from orchestrator.configfile import save_config
from orchestrator.dispatch.dispatcher import Dispatcher, open_dispatcher
from orchestrator.errors import AdSandboxError
from orchestrator.models import RunRequest
from orchestrator.outcomes import (
    ERROR_TYPES,
    EXIT_REASONS,
    FAILURES,
    REASON_ERRORS,
    ErrorType,
    ExitReason,
    exit_code,
    reason_error,
)
from orchestrator.results import DispatchResult
from orchestrator.runtime.fake import FakeRuntime
from tests.fake_claude import fake_claude

SPEC_EXIT_CODES: dict[ErrorType, int] = {
    # SPEC §8: 0 ok, 1 task failed, 2 usage or config error, 3 limit hit (timeout, budget,
    # depth), 4 sandbox or Docker problem.
    "cli_error": 1, "cancelled": 1,
    "config": 2, "bad_request": 2, "not_found": 2, "permission": 2,
    "timeout": 3, "budget": 3, "recursion": 3, "usage_limit": 3,
    "oom": 4, "sandbox": 4,
}


def test_every_error_type_and_exit_reason_has_one_row() -> None:
    assert set(FAILURES) == set(ERROR_TYPES) == set(SPEC_EXIT_CODES)
    assert set(REASON_ERRORS) == set(EXIT_REASONS)
    assert all(row.hint.strip() for row in FAILURES.values())
    assert REASON_ERRORS["completed"] is None  # claude's own report decides
    assert REASON_ERRORS["cancelled"] == "cancelled"


@pytest.mark.parametrize("error_type", ERROR_TYPES)
def test_exit_codes_are_spec_section_8(error_type: ErrorType) -> None:
    assert FAILURES[error_type].exit_code == SPEC_EXIT_CODES[error_type]
    failed = DispatchResult(agent="a", success=False, error_type=error_type)
    assert exit_code_for(failed) == SPEC_EXIT_CODES[error_type]


@pytest.mark.parametrize(("reason", "code"), [
    ("completed", 1), ("timeout", 3), ("budget", 3), ("oom", 4), ("crashed", 4),
    ("cancelled", 1),
])
def test_a_failure_without_a_type_is_read_by_its_exit_reason(reason: ExitReason,
                                                              code: int) -> None:
    assert exit_code_for(DispatchResult(agent="a", success=False, exit_reason=reason)) == code
    assert exit_code(True, "sandbox", reason) == 0


@pytest.mark.parametrize("reason", [r for r in EXIT_REASONS if r != "completed"])
def test_the_runner_reads_type_and_hint_from_the_table(reason: ExitReason) -> None:
    error_type, hint = reason_error(reason)
    assert error_type == REASON_ERRORS[reason] and hint == FAILURES[error_type].hint


def test_a_completed_run_is_not_classified_by_the_table() -> None:
    with pytest.raises(ValueError, match="claude reported"):
        reason_error("completed")


def _error_classes() -> Iterator[type[AdSandboxError]]:
    todo: list[type[AdSandboxError]] = [AdSandboxError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


def test_every_error_class_takes_exit_code_and_hint_from_the_table() -> None:
    for cls in _error_classes():
        exc = cls("what happened")
        assert exc.error_type in FAILURES, cls
        assert exc.exit_code == SPEC_EXIT_CODES[exc.error_type], cls
        assert exc.hint, cls
    assert errors.ConfigError("x").hint == FAILURES["config"].hint
    assert errors.BudgetExceeded("x").exit_code == 3
    assert errors.RecursionLimit("x").exit_code == 3
    assert errors.DockerUnavailable("x").exit_code == 4
    assert errors.UsageError("x").exit_code == errors.AgentNotFound("x").exit_code == 2
    assert errors.ConfigError("x", hint="do this").hint == "do this"


def test_the_never_raised_classes_are_gone() -> None:
    for dead in ("LimitExceeded", "RunTimeout", "OutOfMemory", "TaskFailed"):
        assert not hasattr(errors, dead), dead


# --- a cancelled run says cancelled, wherever it was cancelled ------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def runtime() -> FakeRuntime:
    fake = FakeRuntime()
    fake.on_command("bash", fake_claude)
    return fake


@pytest.fixture
def config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    save_config(Config(
        settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                          pool=Pool(warm_per_agent=0), max_concurrency=1),
        agents={"proj": Agent(directory=str(project))},
    ), tmp_path / "agents.yaml")
    return tmp_path


@pytest.fixture
async def dispatcher(config_env: Path, runtime: FakeRuntime) -> AsyncIterator[Dispatcher]:
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "sha256:fake") as opened:
        yield opened


def _is_cancelled(record: Any) -> None:
    assert record.exit_reason == "cancelled" and record.error_type == "cancelled"
    assert record.hint == FAILURES["cancelled"].hint
    result = DispatchResult.from_record(record)
    assert not result.success and exit_code_for(result) == 1


@pytest.mark.anyio
async def test_a_run_cancelled_while_it_runs_reports_cancelled(dispatcher: Dispatcher,
                                                               runtime: FakeRuntime) -> None:
    job = dispatcher.start_async(RunRequest(agent="proj", task="[[sleep: 60]] slow"))
    live = dispatcher.live(job)
    assert live is not None
    with anyio.fail_after(10):
        while live.container_id is None or not any(c[0] == "exec" for c in runtime.calls):
            await live.wait_change(1)
    _is_cancelled(await dispatcher.cancel(job))


@pytest.mark.anyio
async def test_a_run_cancelled_while_queued_reports_cancelled(dispatcher: Dispatcher) -> None:
    first = dispatcher.start_async(RunRequest(agent="proj", task="[[sleep: 30]] a"))
    holder = dispatcher.live(first)
    assert holder is not None
    with anyio.fail_after(10):
        while holder.container_id is None:
            await holder.wait_change(1)
    second = dispatcher.start_async(RunRequest(agent="proj", task="b"))
    queued = dispatcher.live(second)
    assert queued is not None
    with anyio.fail_after(10):
        while queued.queue_position is None:
            await queued.wait_change(1)
    _is_cancelled(await dispatcher.cancel(second))
    await dispatcher.cancel(first)
