"""Run the benchmark of SPEC §10 and issue 11: ``.venv/bin/python -m benchmarks.run``.

Every target is a ratio against a baseline measured in this same run (the bare host
`claude -p`, the peer agent-dispatch with its stdin stall fixed) or, for the cache hit and the
timeout kill, a bound in ms; nothing here is a test. Exit 0 when every step ran and every
correctness check held (missed timing targets are reported, not fatal), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orchestrator
from benchmarks.fanout import measure_fan_out, measure_memory
from benchmarks.harness import Engine, Workspace, serve
from benchmarks.measures import (
    Bench,
    measure_cache,
    measure_dispatch,
    measure_start,
    measure_timeout,
    runsc_skip,
)
from benchmarks.peer import PEER, ensure_peer, installed_version, peer_env, peer_serve
from benchmarks.phases import phase_table, run_phases
from benchmarks.report import LATEST, Row, table
from orchestrator.runtime.gvisor import REGISTER_HINT, RUNSC
from orchestrator.runtime.staging import stage_claude
from orchestrator.stub import StubServer

DEFAULT_ROUNDS = 15


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--rounds", type=int, help="alternating rounds per comparison "
                        f"(default {DEFAULT_ROUNDS}; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="one round and a fan-out of 5: proves every path still runs "
                        "(exit 1 only when one is broken); writes no results unless --json")
    parser.add_argument("--json", type=Path, help="write the results here (default: "
                        "benchmarks/results/latest.json, not with --quick)")
    parser.add_argument("--no-phases", action="store_true",
                        help="skip the per-phase breakdown of warm, cold and cached dispatches")
    parser.add_argument("--require-runsc", action="store_true",
                        help="fail when runsc (gVisor) is not registered with the engine "
                        "(without it, its rows are reported as not measured)")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.json is None and not args.quick:
        args.json = LATEST
    return args


async def with_servers(b: Bench, rows: list[Row]) -> None:
    """Long-lived `ad-sandbox serve` (warm pool, cold, cache on; warm and cold under runsc
    when it is registered) and three of the peer (as shipped, stdin fixed, stdin fixed with
    its cache on), side by side."""
    ws = b.ws
    async with AsyncExitStack() as stack:
        ours = "warm, cold, cache" + ("" if b.runsc_skip else ", warm and cold under runsc")
        b.say(f"starting `ad-sandbox serve` ({ours}) and three of the peer")
        b.warm = await stack.enter_async_context(
            serve(ws.server_env("warm", warm=1, cache=False), ws.log_file("warm")))
        b.cold = await stack.enter_async_context(
            serve(ws.server_env("cold", warm=0, cache=False), ws.log_file("cold")))
        if not b.runsc_skip:
            b.warm_runsc = await stack.enter_async_context(serve(
                ws.server_env("warm-runsc", warm=1, cache=False, runtime=RUNSC),
                ws.log_file("warm-runsc")))
            b.cold_runsc = await stack.enter_async_context(serve(
                ws.server_env("cold-runsc", warm=0, cache=False, runtime=RUNSC),
                ws.log_file("cold-runsc")))
        b.cache = await stack.enter_async_context(
            serve(ws.server_env("cache", warm=0, cache=True), ws.log_file("cache")))
        for name, variant, cache in (("shipped", "shipped", False), ("fixed", "fixed", False),
                                     ("cache", "fixed", True)):
            env = peer_env(ws, b.claude, b.stub_url, variant, cache=cache,
                           max_concurrency=b.max_concurrency)
            b.peers[name] = await stack.enter_async_context(
                peer_serve(env, ws.root / f"peer-{name}.log"))
        rows += await measure_dispatch(b)
        rows += await measure_cache(b)
        rows += await measure_fan_out(b, next(r.median for r in rows if r.key == "cold"))
        rows.append(await measure_timeout(b))
    rows += await measure_memory(b)


ORDER = ("bare", "warm", "cold", "warm_runsc", "cold_runsc", "peer_dispatch",
         "peer_dispatch_shipped", "one_core",
         "cache_hit", "peer_cache_hit", "mcp_floor", "peer_mcp_floor",
         "serve_start", "peer_start", "import_mcp", "peer_import_mcp",
         "fan_out", "peer_fan_out", "host_fan_out",
         "rss_0", "peer_rss_0", "rss_1", "peer_rss_1", "timeout_kill")


def ordered(rows: list[Row]) -> list[Row]:
    """The rows in table order (a row this list does not know goes last)."""
    return sorted(rows, key=lambda r: ORDER.index(r.key) if r.key in ORDER else len(ORDER))


def describe(exc: BaseException) -> str:
    """The error in one line; a task group's errors by their leaves, not the group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def breakdown(ws: Workspace, rounds: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per-phase timings of warm, cold and cached dispatches, each in its own child process."""
    results = []
    for mode, warm, cache in (("warm", 1, False), ("cold", 0, False), ("cache", 0, True)):
        env = ws.server_env(f"phases-{mode}", warm=warm, cache=cache)
        results.append(run_phases(env, mode, rounds))
        say(f"phases of a {mode} dispatch measured ({rounds} rounds)")
    return results


def machine(engine: Engine) -> dict[str, Any]:
    model, memory = "?", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().split()
        memory = int(meminfo[meminfo.index("MemTotal:") + 1]) // 1024
    except (OSError, ValueError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_mib": memory,
            "kernel": platform.release(), "docker": engine.client.version().get("Version"),
            "runtimes": sorted(engine.runtimes())}


def conditions() -> dict[str, Any]:
    """What else the machine was doing: load average and other pytest processes (a test suite
    running alongside skews both)."""
    found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True,
                           check=False)
    return {"load_avg": [round(x, 2) for x in os.getloadavg()],
            "pytest_processes": len(found.stdout.split())}


class Watch:
    """Samples :func:`conditions` every ``every`` seconds in a thread while the run lasts, so
    a test suite that starts after ``start`` (the first sample) is seen too."""

    def __init__(self, say: Callable[[str], None], start: dict[str, Any],
                 every: float = 5.0) -> None:
        self.say, self.every, self.samples = say, every, 0
        self.worst: dict[str, Any] = {"load_avg": [0.0, 0.0, 0.0], "pytest_processes": 0}
        self._seen = bool(start["pytest_processes"])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            now = conditions()
            self.samples += 1
            if now["pytest_processes"] and not self._seen:
                self._seen = True
                self.say(f"note: {now['pytest_processes']} pytest processes started during the "
                         "run; expect noise")
            self.worst = {"load_avg": max(self.worst["load_avg"], now["load_avg"]),
                          "pytest_processes": max(self.worst["pytest_processes"],
                                                  now["pytest_processes"])}

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        """The busiest sample: highest 1-minute load and most pytest processes seen."""
        return {**self.worst, "samples": self.samples, "every_s": self.every}


def versions(runtimes: dict[str, Any]) -> dict[str, str | None]:
    return {"ad_sandbox": orchestrator.__version__, "claude": orchestrator.CLAUDE_VERSION,
            "agent_dispatch": installed_version(PEER), "python": platform.python_version(),
            "mcp": importlib.metadata.version("mcp"), "mcp_peer": installed_version("mcp"),
            "runsc": runsc_version(runtimes)}


def runsc_version(runtimes: dict[str, Any]) -> str | None:
    """`runsc --version`'s first line for the engine's runsc (None when it has none)."""
    path = runtimes.get(RUNSC, {}).get("path")
    if not path:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.splitlines()
    return lines[0] if lines else None


def main(argv: list[str] | None = None) -> int:
    import anyio

    args = parse(argv)
    began = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    before = conditions()
    if before["pytest_processes"]:
        say(f"note: {before['pytest_processes']} pytest processes are running; expect noise")
    engine = Engine()
    runtimes = engine.runtimes()
    skip = runsc_skip(runtimes)
    if skip and args.require_runsc:
        say(f"runsc is not registered with the engine and --require-runsc was given. "
            f"{REGISTER_HINT}")
        engine.close()
        return 1
    say(f"runsc: {skip}" if skip else "runsc is registered: measuring the gVisor rows too")
    claude = stage_claude(orchestrator.CLAUDE_VERSION, say).path
    ensure_peer(say)
    rows: list[Row] = []
    phases: list[dict[str, Any]] = []
    leftovers: list[str] = []
    failure = ""
    with (Watch(say, before) as watch,
          tempfile.TemporaryDirectory(prefix="ad-sandbox-bench-") as tmp):
        ws = Workspace(Path(tmp))
        stub = StubServer("127.0.0.1", 0).start()
        bench = Bench(ws=ws, engine=engine, claude=claude, stub_url=stub.url,
                      rounds=args.rounds, say=say, fan_out=5 if args.quick else 10,
                      runsc_skip=skip)
        say(f"agents {ws.tag}-*, {args.rounds} rounds, claude {orchestrator.CLAUDE_VERSION}")
        try:
            rows += measure_start(bench)
            anyio.run(with_servers, bench, rows)
            if not args.no_phases:
                phases = breakdown(ws, 1 if args.quick else max(3, args.rounds // 3), say)
        except Exception as exc:  # report what ran, then fail
            failure = describe(exc)
            say(f"FAILED: {failure}")
        finally:
            stub.stop()
            # After the servers have exited, nothing of the benchmark may remain.
            leftovers = engine.cleanup(ws.agents)
            info = machine(engine)
            engine.close()
    say(f"done in {time.monotonic() - began:.0f} s")
    rows = ordered(rows)
    print(table(rows))
    by_key = {r.key: r for r in rows}
    if phases and {"warm", "cold", "cache_hit"} <= by_key.keys():
        print("\nWhere the time goes (dispatcher in-process, timed Docker calls, medians):")
        print(phase_table(phases, {"warm": by_key["warm"].median,
                                   "cold": by_key["cold"].median,
                                   "cache": by_key["cache_hit"].median}))
    if leftovers:
        print(f"\nLEFT BEHIND after the servers exited (now removed): {leftovers}")
    ok = not failure and not leftovers and bool(rows) and all(r.ok for r in rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": versions(runtimes), "machine": info,
            "conditions": {"start": before, "during": watch.summary(), "end": conditions()},
            "counts": {"rounds": args.rounds, "fan_out": bench.fan_out,
                       "max_concurrency": bench.max_concurrency, "quick": args.quick,
                       "runsc": skip or "measured"},
            "rounds": args.rounds, "seconds": round(time.monotonic() - began),
            "ok": ok, "failure": failure or None, "leftover_containers": leftovers,
            "rows": [r.to_json() for r in rows], "phases": phases,
        }, indent=2) + "\n")
        say(f"results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
