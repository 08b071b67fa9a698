"""Run the SPEC §10 benchmark: ``.venv/bin/python -m benchmarks.run [--rounds N] [--json PATH]``.

Every target is a ratio against a baseline measured in this same run (or, for the cache hit
and the timeout kill, a bound in ms); nothing here is a test. Exit 0 when every step ran and
every correctness check held (missed timing targets are reported, not fatal), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orchestrator
from benchmarks.harness import Engine, Workspace, serve
from benchmarks.measures import (
    Bench,
    measure_cache,
    measure_dispatch,
    measure_fan_out,
    measure_start,
    measure_timeout,
)
from benchmarks.phases import phase_table, run_phases
from benchmarks.report import Row, table
from orchestrator.runtime.staging import stage_claude
from orchestrator.stub import StubServer

DEFAULT_ROUNDS = 15


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="alternating rounds per comparison (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-phases", action="store_true",
                        help="skip the per-phase breakdown of warm, cold and cached dispatches")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


async def with_servers(b: Bench) -> list[Row]:
    """Three long-lived `ad-sandbox serve` processes: warm pool, cold, cache on."""
    ws = b.ws
    async with AsyncExitStack() as stack:
        b.say("starting three `ad-sandbox serve` (warm, cold, cache)")
        b.warm = await stack.enter_async_context(
            serve(ws.server_env("warm", warm=1, cache=False), ws.log_file("warm")))
        b.cold = await stack.enter_async_context(
            serve(ws.server_env("cold", warm=0, cache=False), ws.log_file("cold")))
        b.cache = await stack.enter_async_context(
            serve(ws.server_env("cache", warm=0, cache=True), ws.log_file("cache")))
        base, warm, cold, core = await measure_dispatch(b)
        cache = await measure_cache(b)
        fan = await measure_fan_out(b, cold.median_ms, base.median_ms)
        timeout = await measure_timeout(b)
    return [base, warm, cold, core, *cache, *fan, timeout]


def breakdown(ws: Workspace, rows: list[Row], rounds: int,
              say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per-phase timings of warm, cold and cached dispatches, each in its own child process."""
    results = []
    for mode, warm, cache in (("warm", 1, False), ("cold", 0, False), ("cache", 0, True)):
        env = ws.server_env(f"phases-{mode}", warm=warm, cache=cache)
        results.append(run_phases(env, mode, rounds))
        say(f"phases of a {mode} dispatch measured ({rounds} rounds)")
    return results


def machine(engine: Engine) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "docker": engine.client.version().get("Version"),
            "claude": orchestrator.CLAUDE_VERSION}


def main(argv: list[str] | None = None) -> int:
    import anyio

    args = parse(argv)
    began = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    claude = stage_claude(orchestrator.CLAUDE_VERSION, say).path
    engine = Engine()
    rows: list[Row] = []
    phases: list[dict[str, Any]] = []
    leftovers: list[str] = []
    failure = ""
    with tempfile.TemporaryDirectory(prefix="ad-sandbox-bench-") as tmp:
        ws = Workspace(Path(tmp))
        stub = StubServer("127.0.0.1", 0).start()
        bench = Bench(ws=ws, engine=engine, claude=claude, stub_url=stub.url,
                      rounds=args.rounds, say=say)
        say(f"agents {ws.tag}-*, {args.rounds} rounds, claude {orchestrator.CLAUDE_VERSION}")
        try:
            start = measure_start(ws, args.rounds, say)
            rows = anyio.run(with_servers, bench)
            rows[6:6] = start
            if not args.no_phases:
                phases = breakdown(ws, rows, max(3, args.rounds // 3), say)
        except Exception as exc:  # report what ran, then fail
            failure = f"{type(exc).__name__}: {exc}"
            say(f"FAILED: {failure}")
        finally:
            stub.stop()
            # After the servers have exited, nothing of the benchmark may remain.
            leftovers = engine.cleanup(ws.agents)
            info = machine(engine)
            engine.close()
    say(f"done in {time.monotonic() - began:.0f} s")
    print(table(rows))
    if phases:
        print("\nWhere the time goes (dispatcher in-process, timed Docker calls, medians):")
        client_ms = {"warm": rows[1].median_ms, "cold": rows[2].median_ms,
                     "cache": rows[4].median_ms}
        print(phase_table(phases, client_ms))
    if leftovers:
        print(f"\nLEFT BEHIND after the servers exited (now removed): {leftovers}")
    ok = not failure and not leftovers and all(r.ok for r in rows)
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": info, "rounds": args.rounds, "seconds": round(time.monotonic() - began),
            "ok": ok, "failure": failure or None, "leftover_containers": leftovers,
            "rows": [r.to_json() for r in rows], "phases": phases,
        }, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
