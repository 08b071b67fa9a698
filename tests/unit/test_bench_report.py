"""The benchmark's report: ratios and targets of a row, and the README Performance block
generated from a results file (no benchmark is run here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.report import END, START, Row, main, markdown, replace_block


def warm_row() -> Row:
    return Row("warm", "warm dispatch (MCP stdio)", [300.0, 200.0, 250.0], kind="ratio",
               reference="bare", reference_value=500.0, target=0.5, peer_value=240.0,
               peer_target=1.0)


def results(rows: list[Row]) -> dict[str, object]:
    return {"date": "2026-12-03T12:00:00+00:00", "rounds": 6, "ok": True,
            "versions": {"ad_sandbox": "0.1.0", "claude": "2.1.332",
                         "agent_dispatch": "0.16.0", "python": "3.11.7"},
            "machine": {"cpus": 2, "cpu_model": "Some CPU", "memory_mib": 24576,
                        "kernel": "6.1"},
            "rows": [r.to_json() for r in rows]}


def test_a_row_checks_its_target_and_the_peer_target_apart() -> None:
    row = warm_row()
    assert row.ratio == pytest.approx(0.5)
    assert row.vs_peer == pytest.approx(250 / 240)
    assert row.met is False  # within 0.5x of bare, but slower than the peer
    assert "vs peer 1.04x" in row.miss and "target" not in row.miss
    row.peer_value = 260.0
    assert row.met is True and row.miss == ""


def test_a_value_target_bounds_the_median_and_info_rows_have_none() -> None:
    hit = Row("cache_hit", "cache hit", [4.0, 6.0], kind="value", reference="cache_stats",
              reference_value=2.0, target=4.5)
    assert hit.ratio == pytest.approx(2.5) and hit.met is False
    assert hit.miss == "5.0 ms vs 4.5 ms"
    info = Row("bare", "host claude -p", [1.0])
    assert info.met is None and math.isnan(info.ratio) and info.target_text() == "-"
    info.ok = False
    assert info.met is False


def test_a_row_survives_the_results_file() -> None:
    row = warm_row()
    back = Row.from_json(json.loads(json.dumps(row.to_json())))
    assert back == row
    blank = Row.from_json(json.loads(json.dumps(Row("x", "x", [1.0]).to_json())))
    assert math.isnan(blank.target) and math.isnan(blank.peer_value)


def test_the_markdown_table_has_one_line_per_row_with_both_ratios() -> None:
    text = markdown(results([warm_row(), Row("bare", "host claude -p", [500.0])]))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header + two rows
    warm = lines[1].split(" | ")
    assert warm[0] == "| warm dispatch (MCP stdio)"
    assert "0.50x" in warm and "1.04x" in warm and warm[-1] == "NO |"
    assert "agent-dispatch 0.16.0" in text and "2 cores (Some CPU)" in text


def test_the_readme_block_is_replaced_between_the_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{START}\nold table\n{END}\n\n## Next\nkept\n")
    data = tmp_path / "latest.json"
    data.write_text(json.dumps(results([warm_row()])))
    assert main(["--json", str(data), "--readme", str(readme)]) == 0
    once = readme.read_text()
    assert "old table" not in once and "| warm dispatch (MCP stdio) |" in once
    assert once.startswith("# x\n\n## Performance\n\n")
    assert once.endswith(f"{END}\n\n## Next\nkept\n")
    assert main(["--json", str(data), "--readme", str(readme)]) == 0
    assert readme.read_text() == once  # idempotent


def test_missing_markers_or_results_fail_with_a_message(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="perf:start"):
        replace_block("# no markers\n", "table")
    assert main(["--json", str(tmp_path / "absent.json")]) == 1
    assert "make bench" in capsys.readouterr().err


def test_a_gvisor_row_has_a_ratio_against_runc_and_the_table_shows_it() -> None:
    row = Row("warm_runsc", "warm dispatch under runsc", [900.0, 1100.0], kind="ratio",
              reference="bare", reference_value=500.0, runc_value=250.0)
    assert row.ratio == pytest.approx(2.0) and row.vs_runc == pytest.approx(4.0)
    assert math.isnan(warm_row().vs_runc)
    assert Row.from_json(json.loads(json.dumps(row.to_json()))) == row
    cells = next(line for line in markdown(results([row])).splitlines()
                 if line.startswith("| warm dispatch under runsc")).split(" | ")
    assert cells[6:9] == ["2.00x", "-", "4.00x"]  # vs bare, vs peer, vs runc


def test_rows_not_measured_say_why_and_pass() -> None:
    from benchmarks.measures import RUNSC_MISSING, runsc_rows, runsc_skip

    assert runsc_skip({"runc": {"path": "runc"}}) == RUNSC_MISSING
    assert runsc_skip({"runc": {}, "runsc": {"path": "/usr/bin/runsc"}}) == ""
    rows = runsc_rows({}, {}, warm_row(), warm_row(), warm_row(), RUNSC_MISSING)
    assert [r.key for r in rows] == ["warm_runsc", "cold_runsc"]
    assert all(r.met is None and not r.samples for r in rows)
    text = markdown(results(rows))
    assert text.count("(not measured: runsc not registered) | 0 | - |") == 2


def test_require_runsc_fails_before_measuring_on_an_engine_without_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.run as run

    class NoRunsc:
        def runtimes(self) -> dict[str, object]:
            return {"runc": {"path": "runc"}}

        def close(self) -> None:
            pass

    def must_not_stage(*args: object) -> None:
        raise AssertionError("staged claude although runsc is required and missing")

    monkeypatch.setattr(run, "Engine", NoRunsc)
    monkeypatch.setattr(run, "stage_claude", must_not_stage)
    assert run.main(["--quick", "--require-runsc"]) == 1
    assert "runsc is not registered" in capsys.readouterr().err


def test_the_block_says_when_other_tests_ran() -> None:
    data = results([warm_row()])
    data["conditions"] = {"start": {"pytest_processes": 0}, "during": {"pytest_processes": 2},
                          "end": {"pytest_processes": 2}}
    assert "running on the machine during it and at its end; expect noise" in markdown(data)
    data["conditions"] = {"start": {"pytest_processes": 0}, "during": {"pytest_processes": 0}}
    assert "expect noise" not in markdown(data)
