"""Errors that would change behaviour are not swallowed: an unrecorded cost stops spending,
an adopted run whose secrets cannot be read hands back no output, an unknown project state
skips the cache, and the service logs the engine errors it answers around."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.config import Agent, Config, EnvSource, ModelApi, Pool, Settings
from orchestrator.configfile import save_config
from orchestrator.dispatch import projectstate
from orchestrator.dispatch.dispatcher import open_dispatcher
from orchestrator.dispatch.service import open_service
from orchestrator.errors import ConfigError, DockerUnavailable
from orchestrator.gateway.budget import Ask, Hold, Spend
from orchestrator.gateway.ledger_gate import LedgerGate
from orchestrator.gateway.tokens import TokenInfo
from orchestrator.models import RunRecord, RunRequest
from orchestrator.outcomes import FAILURES
from orchestrator.run.runner import end_unredactable
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.state import StateStore
from orchestrator.state.ledger import Limits
from tests.fake_claude import fake_claude

RUN = TokenInfo(run_id="r1", root_id="r0", agent="coder", depth=1, caller="root")
OTHER = TokenInfo(run_id="r2", root_id="r2", agent="coder", depth=0, caller="cli")
OPEN = Limits(run=100.0, root=100.0, daily=100.0, day_since=0.0)
ASK = Ask("m", input_usd=0.001, usd_per_output_token=0.000001, max_tokens=1000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state.db") as opened:
        yield opened


# --- (a) a cost the ledger cannot record stops the spending ---------------------------------


def test_a_cost_the_ledger_cannot_record_refuses_every_request_until_it_is_booked(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[tuple[str, str]] = []
    gate = LedgerGate(store, limits=lambda info: OPEN,
                      on_refused=lambda info, why: refused.append((info.run_id, why)))
    hold = gate.reserve(RUN, ASK)
    assert isinstance(hold, Hold)
    settle = store.settle

    def broken(*args: Any, **kwargs: Any) -> float:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "settle", broken)
    with pytest.raises(sqlite3.OperationalError):
        gate.settle(RUN, hold, Spend("m", 10, 10, 0.0005, seen=True, complete=True))
    assert refused and refused[0][0] == "r1" and "could not be recorded" in refused[0][1]
    assert store.spent_run("r1") == 0.0
    # Fail closed: nothing more is forwarded, for this run or any other, while it fails.
    for info in (RUN, OTHER):
        why = gate.reserve(info, ASK)
        assert isinstance(why, str) and "could not be recorded" in why
    assert [run for run, _ in refused] == ["r1", "r1", "r2"]
    # Once the ledger writes again, the cost is booked first, then requests pass.
    monkeypatch.setattr(store, "settle", settle)
    assert isinstance(gate.reserve(OTHER, ASK), Hold)
    assert store.spent_run("r1") == pytest.approx(0.0005)


# --- (b) an adopted run whose secrets cannot be read hands back nothing ---------------------


def write_config(tmp_path: Path, **agent: Any) -> Path:
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    save_config(Config(
        settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                          pool=Pool(warm_per_agent=0)),
        agents={"proj": Agent(directory=str(project), **agent)},
    ), tmp_path / "agents.yaml")
    return project


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    write_config(tmp_path)
    return tmp_path


@pytest.fixture
def runtime() -> FakeRuntime:
    fake = FakeRuntime()
    fake.on_command("bash", fake_claude)
    return fake


def test_end_unredactable_withholds_the_output(store: StateStore) -> None:
    record = RunRecord(agent="proj", status="running", session_id="s-1", result="partial")
    store.insert_run(record)
    exc = ConfigError("secret TOKEN reads $X, which is not set", hint="Export X.")
    ended = end_unredactable(store, record, exc)
    assert ended.status == "finished" and not ended.success and ended.result == ""
    assert "withheld" in (ended.error or "") and ended.error_type == "config"
    assert ended.hint == "Export X. Then dispatch the task again, or resume session s-1."


@pytest.mark.anyio
async def test_an_adopted_run_whose_secrets_cannot_be_read_is_ended_withheld(
    env: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_TOKEN", "s3cret-value-123")
    write_config(env, secrets={"TOKEN": EnvSource(env="DEMO_TOKEN")})
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1", reattach=True,
                               image_id=lambda ref: "x", wait_for_runs=False) as first:
        job = first.start_async(RunRequest(agent="proj", task="[[sleep: 60]] long"))
        live = first.live(job)
        assert live is not None
        with anyio.fail_after(10):
            while not any(call[0] == "exec" for call in runtime.calls):
                await live.wait_change(1)
    with StateStore() as state:
        state.update_run(job, owner_pid=2**22 + 7)  # the process that ran it died
    monkeypatch.delenv("DEMO_TOKEN")  # and the next one cannot read the secret
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1", reattach=True,
                               image_id=lambda ref: "x") as second:
        record = second.state.get_run(job)
    assert record.status == "finished" and not record.success and record.result == ""
    assert "withheld" in (record.error or "") and "DEMO_TOKEN" in (record.hint or "")
    assert runtime.list_managed() == []  # its container went with it


# --- (d) an unknown project state makes the request uncacheable -----------------------------


@pytest.mark.anyio
async def test_an_unknown_project_state_skips_the_cache(
    env: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unknown(directory: Path, *args: Any) -> str:
        raise projectstate.StateUnknown("HEAD is not a ref")

    monkeypatch.setattr(projectstate, "fingerprint", unknown)
    async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                               image_id=lambda ref: "x") as dispatcher:
        first = await dispatcher.dispatch(RunRequest(agent="proj", task="cache me"))
        second = await dispatcher.dispatch(RunRequest(agent="proj", task="cache me"))
        stats = dict(dispatcher.state.cache_stats())
    assert first.success and second.success and not second.cached
    assert len([call for call in runtime.calls if call[0] == "exec"]) == 2
    assert stats.get("entries", 0) == 0


# --- (c) the service logs the engine errors it answers around -------------------------------


@pytest.mark.anyio
async def test_the_service_logs_an_engine_it_cannot_reach(
    env: Path, runtime: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_service(warm=False, reattach=False, runtime=runtime,
                            gateway_host="127.0.0.1", image_id=lambda ref: "x") as service:
        caplog.set_level(logging.INFO, logger="orchestrator.dispatch.service")
        runtime.fail_next["list_managed"] = DockerUnavailable("the engine went away")
        collected = await service.collect()
        assert collected.containers == []
        runtime.fail_next["list_managed"] = DockerUnavailable("the engine went away")
        status = await service.sandbox_status()
        assert not status.docker
    logged = [r.getMessage() for r in caplog.records if "engine went away" in r.getMessage()]
    assert len(logged) == 2, caplog.text
    assert FAILURES["sandbox"].exit_code == DockerUnavailable("x").exit_code
