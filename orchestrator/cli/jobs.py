"""`jobs`, `job`, `cancel`, `gc`, `stats`: the run records, from any process, after the fact."""

from __future__ import annotations

import json
import time
from typing import Annotated

import anyio
import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.dispatch import (
    DAY_S,
    GC_AFTER_S,
    Collected,
    JobStatus,
    child_runs,
    find_run,
    list_runs,
    open_command_service,
    run_stats,
)
from orchestrator.models import RunRecord

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _line(record: RunRecord, now: float) -> str:
    end = record.finished_at or now
    reason = record.exit_reason or record.status
    mark = "ok" if record.success else ("…" if record.status != "finished" else "FAIL")
    return (f"{record.run_id}  {record.agent:14} {mark:4} {reason:10} "
            f"{end - record.created_at:7.1f}s  ${max(record.cost_usd, record.claude_cost_usd):.4f}"
            f"  {record.task[:50]!r}")


@app.command("jobs")
@handles_errors
def jobs(
    status: Annotated[str | None, typer.Option(help="queued, running or finished.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recent runs (sync dispatches and async jobs alike), newest first."""
    records = list_runs(status=status, agent=agent, limit=limit)
    if as_json:
        out(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    now = time.time()
    for record in records:
        out(_line(record, now))
    if not records:
        out("no runs recorded")


@app.command("job")
@handles_errors
def job(
    run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix.")],
    as_json: JsonFlag = False,
) -> None:
    """One run's full record: status, exit reason, result, cost, container."""
    record = find_run(run_id)
    if as_json:
        out(json.dumps(record.model_dump(mode="json"), indent=2))
        return
    out(_line(record, time.time()))
    for name in ("exit_reason", "outcome", "session_id", "container_id", "image", "error",
                 "error_type", "hint", "last_action"):
        value = getattr(record, name)
        if value:
            out(f"  {name}: {value}")
    if record.parent_id:
        out(f"  parent_run_id: {record.parent_id} (depth {record.depth}, root {record.root_id})")
    for child in child_runs(record.run_id):
        out(f"  child: {child.run_id} {child.agent} {child.status}"
            + (f" ({child.exit_reason})" if child.exit_reason else ""))
    if record.result:
        out("\n" + record.result)


@app.command("cancel")
@handles_errors
def cancel(run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix.")]) -> None:
    """Kill a running run's container; its owner records it as cancelled."""

    async def main() -> JobStatus:
        async with open_command_service() as service:
            return await service.cancel(run_id)

    cancelled = anyio.run(main)
    out(f"{cancelled.job_id}: {cancelled.status}"
        + (f" ({cancelled.exit_reason})" if cancelled.exit_reason else " (cancel requested)"))


@app.command("gc")
@handles_errors
def gc(
    older_than_days: Annotated[float, typer.Option(min=0, help="Keep newer records.")] = (
        GC_AFTER_S / DAY_S),
    every: Annotated[bool, typer.Option(
        "--all", help="Reap every config's leftover containers, not only this config's.")
    ] = False,
) -> None:
    """Remove finished run records past retention and reap leftover containers."""

    async def main() -> Collected:
        async with open_command_service() as service:
            return await service.collect(older_than_days * DAY_S, every_config=every)

    collected = anyio.run(main)
    if every:
        out(f"reaped {len(collected.containers)} container(s) of every config")
    out(f"removed {collected.runs} run record(s)")


@app.command("stats")
@handles_errors
def stats(
    days: Annotated[float, typer.Option(min=0, help="Look back this many days.")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """Runs, successes, failures by exit reason, cost and durations per agent."""
    data = run_stats(days)
    if as_json:
        out(json.dumps(data, indent=2))
        return
    out(f"{'AGENT':16}{'RUNS':>6}{'OK':>6}{'CACHED':>8}{'COST $':>10}{'MEDIAN':>9}  FAILURES")
    for name, entry in sorted(data["agents"].items()):
        median = f"{entry['median_ms'] / 1000:.1f}s" if entry["median_ms"] else "-"
        failures = ", ".join(f"{k} {v}" for k, v in entry["failures"].items()) or "-"
        out(f"{name:16}{entry['runs']:>6}{entry['successes']:>6}{entry['cached']:>8}"
            f"{entry['cost_usd']:>10.4f}{median:>9}  {failures}")
    nested = {root: tree for root, tree in data.get("roots", {}).items() if tree["nested"]}
    for root, tree in list(nested.items())[:10]:  # the costliest trees
        out(f"tree {root}: {tree['runs']} runs, ${tree['cost_usd']:.4f}")
    total = data["total"]
    out(f"total: {total['runs']} runs, {total['successes']} ok, ${total['cost_usd']:.4f}")
