"""Where a dispatch's time goes: the dispatcher in-process (no MCP) over a Docker runtime whose
calls are timed. Diagnostics only; the orchestrator's code is used as is.

Run by :mod:`benchmarks.run` in a child process whose environment names a throwaway config:
``python -m benchmarks.phases warm|cold|cache ROUNDS`` prints one JSON object.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio

from orchestrator.dispatch import cachekey as cache
from orchestrator.dispatch.dispatcher import Dispatcher, open_dispatcher
from orchestrator.dispatch.host import docker_image_id
from orchestrator.models import RunRequest
from orchestrator.run.sandbox import agent_image
from orchestrator.runtime.base import ContainerSpec, ContainerState, ExecResult, LineCallback
from orchestrator.runtime.docker_runtime import DockerRuntime

T = TypeVar("T")
TASK, ANSWER = "[[reply: ok]]", "ok"
DEADLINE_S = 120.0
KEY_GIT = "cache key: project git state (alone)"
KEY_IMAGE = "cache key: image id from the engine (alone)"


class TimedDocker(DockerRuntime):
    """The real runtime, each call (and the OOM check's parts) timed: (name, start, ms)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def _timed(self, name: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            with self._lock:
                self.events.append((name, started, (time.perf_counter() - started) * 1000))

    def create(self, spec: ContainerSpec) -> str:
        return self._timed("container create+start", lambda: super(TimedDocker, self).create(spec))

    def inspect(self, container_id: str) -> ContainerState | None:
        return self._timed("inspect", lambda: super(TimedDocker, self).inspect(container_id))

    def write_files(self, container_id: str, directory: str, files: dict[str, bytes], *,
                    uid: int, gid: int, mode: int = 0o400) -> None:
        self._timed("write files (exec)", lambda: super(TimedDocker, self).write_files(
            container_id, directory, files, uid=uid, gid=gid, mode=mode))

    def exec(self, container_id: str, argv: Sequence[str], *, env: dict[str, str], user: str,
             workdir: str, stdin_file: str | None, on_stdout_line: LineCallback,
             on_stderr: LineCallback, stdin_data: bytes | None = None) -> ExecResult:
        return self._timed("claude exec", lambda: super(TimedDocker, self).exec(
            container_id, argv, env=env, user=user, workdir=workdir, stdin_file=stdin_file,
            on_stdout_line=on_stdout_line, on_stderr=on_stderr, stdin_data=stdin_data))

    def was_oom_killed(self, container_id: str, **options: Any) -> bool:
        return self._timed("OOM check", lambda: super(TimedDocker, self).was_oom_killed(
            container_id, **options))

    def _oom_event_since(self, container_id: str, since: float | None) -> bool:
        return self._timed("  OOM: engine events", lambda: super(
            TimedDocker, self)._oom_event_since(container_id, since))

    def _oom_counter(self, container_id: str) -> int:
        return self._timed("  OOM: cgroup counter (exec)",
                           lambda: super(TimedDocker, self)._oom_counter(container_id))

    def remove(self, container_id: str) -> None:
        self._timed("container remove", lambda: super(TimedDocker, self).remove(container_id))

    def between(self, start: float, end: float) -> dict[str, float]:
        """Total ms per call name for the calls that began in [start, end], in call order,
        each counted up to ``end`` only (a container removed after the answer costs it
        nothing)."""
        totals: dict[str, float] = {}
        with self._lock:
            for name, began, ms in sorted(self.events, key=lambda e: e[1]):
                if start <= began <= end:
                    totals[name] = totals.get(name, 0.0) + min(ms, (end - began) * 1000)
        return totals


async def _warm_ready(d: Dispatcher, agent: str) -> None:
    with anyio.fail_after(DEADLINE_S):
        while not d.state.containers(agent=agent, state="warm"):
            await anyio.sleep(0.05)


async def _timed_dispatch(d: Dispatcher, runtime: TimedDocker, agent: str, task: str,
                          expected: str) -> tuple[float, dict[str, float], bool]:
    started = time.perf_counter()
    with anyio.fail_after(DEADLINE_S):
        result = await d.dispatch(RunRequest(agent=agent, task=task))
    ended = time.perf_counter()
    if not result.success or result.result != expected:
        raise RuntimeError(f"expected {expected!r}, got {result}")
    return (ended - started) * 1000, runtime.between(started, ended), result.cached


async def dispatches(mode: str, rounds: int) -> dict[str, Any]:
    runtime = TimedDocker()
    out: dict[str, Any] = {"mode": mode, "total_ms": [], "phases": {}}
    async with open_dispatcher(warm=mode == "warm", runtime=runtime) as d:
        agent = next(iter(d.config.agents))
        for i in range(rounds + 1):  # the first is a warm-up
            if mode == "warm":
                await _warm_ready(d, agent)
            total, phases, cached = await _timed_dispatch(d, runtime, agent, TASK, ANSWER)
            if mode == "cache" and cached != (i > 0):
                raise RuntimeError(f"round {i}: cached={cached}")
            if i == 0:
                continue
            out["total_ms"].append(total)
            for name, ms in phases.items():
                out["phases"].setdefault(name, []).append(ms)
        if mode == "cache":
            out["phases"].update(await cache_parts(d, agent, rounds))
    return out


async def cache_parts(d: Dispatcher, agent_name: str, rounds: int) -> dict[str, list[float]]:
    """The pieces of a cache lookup, each timed alone: what a hit pays before its answer."""
    agent = d.config.agent(agent_name)
    image = agent_image(d.config, agent)
    parts: dict[str, list[float]] = {KEY_GIT: [],
                                     KEY_IMAGE: []}
    for _ in range(rounds):
        started = time.perf_counter()
        await anyio.to_thread.run_sync(cache.project_state, agent.path)
        middle = time.perf_counter()
        await anyio.to_thread.run_sync(docker_image_id, image)
        ended = time.perf_counter()
        parts[KEY_GIT].append((middle - started) * 1000)
        parts[KEY_IMAGE].append((ended - middle) * 1000)
    return parts


# --- the parent's side -----------------------------------------------------------------------


def run_phases(env: dict[str, str], mode: str, rounds: int) -> dict[str, Any]:
    """Run this module in a child process under ``env`` (a throwaway config and state dir)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.phases", mode, str(rounds)],
                          env=env, capture_output=True, text=True, timeout=DEADLINE_S * 3)
    if done.returncode != 0:
        raise RuntimeError(f"phases {mode} failed: {done.stderr[-1500:]}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def phase_table(results: list[dict[str, Any]], client_ms: dict[str, float]) -> str:
    """Median ms per phase and mode (indented: part of the line above). What the timed calls
    leave of the in-process total is the orchestrator's own work. The phases run after the
    main comparison, not alternated with it, so set them side by side with care."""
    lines = []
    for res in results:
        mode, total = res["mode"], _med(res["total_ms"])
        lines.append(f"{mode}: in-process dispatch median {total:.1f} ms "
                     f"(n={len(res['total_ms'])})")
        top = 0.0
        for name, values in res["phases"].items():
            ms = _med(values)
            if not name.startswith(" "):
                top += ms
            lines.append(f"  {name:<44} {ms:8.1f} ms  ({ms / total:.0%})")
        lines.append(f"  {'rest: orchestrator code, records, threads':<44} {total - top:8.1f} ms")
        if mode in client_ms and not math.isnan(client_ms[mode]):
            lines.append(f"  {'(through MCP stdio in the main comparison)':<44} "
                         f"{client_ms[mode]:8.1f} ms")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    mode, rounds = argv[0], int(argv[1])
    if mode not in ("warm", "cold", "cache"):
        raise SystemExit("usage: python -m benchmarks.phases warm|cold|cache ROUNDS")
    print(json.dumps(anyio.run(dispatches, mode, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
