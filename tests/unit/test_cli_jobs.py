"""`jobs`, `job`, `stats`, `logs` read the run records any process wrote (CliRunner)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.models import RunRecord
from orchestrator.run.runner import run_log_path
from orchestrator.state import StateStore


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[RunRecord]:
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    now = time.time()
    made = [
        RunRecord(agent="infra", task="check logs", status="finished", success=True,
                  exit_reason="completed", result="all quiet", cost_usd=0.02,
                  created_at=now - 30, finished_at=now - 20, duration_ms=10_000),
        RunRecord(agent="infra", task="slow one", status="finished", success=False,
                  exit_reason="timeout", error="run timeout", error_type="timeout",
                  hint="Give it longer", created_at=now - 10, finished_at=now - 5,
                  duration_ms=5_000),
        RunRecord(agent="web", task="build", status="running", created_at=now - 1),
    ]
    with StateStore() as state:
        for record in made:
            state.insert_run(record)
    return made


def test_jobs_lists_newest_first(records: list[RunRecord]) -> None:
    result = CliRunner().invoke(app, ["jobs"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == [r.run_id for r in reversed(records)]
    assert "timeout" in lines[1] and "FAIL" in lines[1]


def test_jobs_filters_and_json(records: list[RunRecord]) -> None:
    result = CliRunner().invoke(app, ["jobs", "--agent", "infra", "--status", "finished",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert [r["task"] for r in json.loads(result.output)] == ["slow one", "check logs"]


def test_job_by_prefix_shows_the_record(records: list[RunRecord]) -> None:
    result = CliRunner().invoke(app, ["job", records[1].run_id[:8]])
    assert result.exit_code == 0, result.output
    assert "exit_reason: timeout" in result.output and "hint: Give it longer" in result.output
    as_json = CliRunner().invoke(app, ["job", records[0].run_id, "--json"])
    assert json.loads(as_json.output)["result"] == "all quiet"


def test_job_unknown_is_exit_2(records: list[RunRecord]) -> None:
    result = CliRunner().invoke(app, ["job", "zzzz"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "ad-sandbox jobs" in result.output


def test_stats_per_agent(records: list[RunRecord]) -> None:
    result = CliRunner().invoke(app, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["agents"]["infra"]["runs"] == 2 and data["agents"]["infra"]["successes"] == 1
    assert data["agents"]["infra"]["failures"] == {"timeout": 1}
    table = CliRunner().invoke(app, ["stats"])
    assert "infra" in table.output and "timeout 1" in table.output


def test_logs_prints_a_runs_stream(records: list[RunRecord]) -> None:
    run_log_path(records[0].run_id).write_text('{"type":"result"}\n')
    result = CliRunner().invoke(app, ["logs", records[0].run_id])
    assert result.exit_code == 0 and '{"type":"result"}' in result.output
    by_agent = CliRunner().invoke(app, ["logs", "nobody-here"])
    assert by_agent.exit_code == 2
