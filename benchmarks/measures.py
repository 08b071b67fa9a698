"""The measurements of SPEC §10, each against a baseline taken in the same run.

Variants alternate round by round (the order rotates) so machine noise hits them alike; the
first round of the dispatch comparison is a warm-up and is not kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from benchmarks.harness import (
    DEADLINE_S,
    POLL_S,
    BenchError,
    Engine,
    Workspace,
    call,
    check_answer,
    host_claude,
    python_import_mcp,
    serve_to_initialize,
    wait_warm,
)
from benchmarks.report import Row, median

TASK, ANSWER = "[[reply: ok]]", "ok"
FAN_OUT, MAX_CONCURRENCY = 10, 4
TIMEOUT_S, KILL_GRACE_S = 3.0, 2.0


@dataclass
class Bench:
    ws: Workspace
    engine: Engine
    claude: Path
    stub_url: str
    rounds: int
    say: Callable[[str], None]
    warm: Client | None = None
    cold: Client | None = None
    cache: Client | None = None

    async def host(self, expected: str = ANSWER, prompt: str = TASK,
                   one_core: bool = False) -> float:
        return await anyio.to_thread.run_sync(
            partial(host_claude, self.claude, self.stub_url, self.ws, prompt, expected, one_core))


def rotate(variants: list[str], i: int) -> list[str]:
    k = i % len(variants)
    return variants[k:] + variants[:k]


async def dispatch_ms(client: Client, agent: str, task: str, expected: str,
                      **extra: Any) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = await call(client, "dispatch", {"agent": agent, "task": task, **extra})
    elapsed = (time.perf_counter() - started) * 1000
    check_answer(answer, expected)
    return elapsed, answer


# --- 5: start-up -----------------------------------------------------------------------------


def measure_start(ws: Workspace, rounds: int, say: Callable[[str], None]) -> list[Row]:
    """`ad-sandbox serve` spawn → initialize answered, alternated with `python -c import mcp`."""
    env = ws.server_env("start", warm=0, cache=True)
    log = ws.log_file("start")
    serve_to_initialize(env, log)  # warm-up: page cache, state dir creation
    python_import_mcp()
    samples: dict[str, list[float]] = {"serve": [], "mcp": []}
    for i in range(rounds):
        for variant in rotate(["serve", "mcp"], i):
            samples[variant].append(serve_to_initialize(env, log) if variant == "serve"
                                    else python_import_mcp())
        say(f"start round {i + 1}/{rounds}: serve {samples['serve'][-1]:.0f} ms, "
            f"import mcp {samples['mcp'][-1]:.0f} ms")
    ref = Row("python -c 'import mcp' (reference)", samples["mcp"])
    serve = Row("serve start -> initialize", samples["serve"], kind="ratio",
                reference="import mcp", reference_ms=ref.median_ms,
                notes=["no target here: SPEC compares it with agent-dispatch's server, not "
                       "installed; `import mcp` is the floor any Python MCP server pays"])
    return [serve, ref]


# --- 1-3: baseline, warm, cold ---------------------------------------------------------------


async def measure_dispatch(b: Bench) -> list[Row]:
    assert b.warm is not None and b.cold is not None
    warm_agent, cold_agent = b.ws.agent("warm"), b.ws.agent("cold")
    samples: dict[str, list[float]] = {"baseline": [], "warm": [], "cold": [], "one core": []}
    refill: list[float] = []
    for i in range(b.rounds + 1):
        for variant in rotate(list(samples), i):
            # Untimed: the warm pool refilled after the last warm run, so nothing else runs.
            refill.append(await wait_warm(b.warm, warm_agent))
            if variant in ("baseline", "one core"):
                elapsed = await b.host(one_core=variant == "one core")
            elif variant == "warm":
                waiting = {c.id for c in await anyio.to_thread.run_sync(
                    b.engine.containers, warm_agent)}
                elapsed, answer = await dispatch_ms(b.warm, warm_agent, TASK, ANSWER)
                if answer.get("container_id") not in waiting:
                    raise BenchError("the warm dispatch did not run in the warm container")
            else:
                elapsed, _ = await dispatch_ms(b.cold, cold_agent, TASK, ANSWER)
            if i > 0:
                samples[variant].append(elapsed)
        if i == 0:
            b.say("dispatch warm-up round done (not kept)")
        else:
            b.say(f"dispatch round {i}/{b.rounds}: " + ", ".join(
                f"{k} {v[-1]:.0f} ms" for k, v in samples.items()))
    base = Row("host claude -p (baseline)", samples["baseline"])
    core = Row("host claude -p on one core", samples["one core"], kind="ratio",
               reference="baseline", reference_ms=base.median_ms,
               notes=["reference only: pinned with taskset, close to the agent containers' "
                      "default `cpus: 1` limit"])
    warm = Row("warm dispatch (MCP stdio)", samples["warm"], kind="ratio", reference="baseline",
               reference_ms=base.median_ms, target=1.10,
               notes=[f"pool refill waited (untimed) median {median(refill) * 1000:.0f} ms"])
    cold = Row("cold dispatch (MCP stdio)", samples["cold"], kind="ratio", reference="baseline",
               reference_ms=base.median_ms, target=2.0)
    for row in (warm, cold):
        row.notes.append(f"{row.median_ms / core.median_ms:.2f}x the one-core host run")
    return [base, warm, cold, core]


# --- 4: cache hit ------------------------------------------------------------------------------


async def measure_cache(b: Bench) -> list[Row]:
    """Cache hits, alternated with the cheapest tool call (the MCP round-trip floor)."""
    assert b.cache is not None
    agent, task = b.ws.agent("cache"), "[[reply: cached answer]]"
    _, first = await dispatch_ms(b.cache, agent, task, "cached answer")
    if first.get("cached"):
        raise BenchError("the first dispatch of the cache test was already a hit")
    hits: list[float] = []
    floor: list[float] = []
    for _ in range(max(10, 2 * b.rounds)):
        elapsed, answer = await dispatch_ms(b.cache, agent, task, "cached answer")
        if not answer.get("cached"):
            raise BenchError(f"expected a cache hit, got {answer}")
        hits.append(elapsed)
        started = time.perf_counter()
        await call(b.cache, "cache_stats", {})
        floor.append((time.perf_counter() - started) * 1000)
    b.say(f"cache hits: median {median(hits):.2f} ms over {len(hits)}; "
          f"cache_stats {median(floor):.2f} ms")
    return [Row("cache hit (MCP stdio)", hits, kind="ms", target=3.0,
                notes=["the same task again after one miss; call to answer at the client"]),
            Row("MCP round trip: cache_stats", floor,
                notes=["reference: the cheapest tool call through the same client and server"])]


# --- 6: fan-out -----------------------------------------------------------------------------------


async def host_fan_out(b: Bench) -> float:
    """Reference: ten bare host `claude -p`, at most four at a time."""
    limiter = anyio.CapacityLimiter(MAX_CONCURRENCY)

    async def one(k: int) -> None:
        async with limiter:
            await b.host(f"fan-{k}", f"[[reply: fan-{k}]]")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(FAN_OUT):
            tg.start_soon(one, k)
    return (time.perf_counter() - started) * 1000


async def mcp_fan_out(b: Bench, row: Row) -> float:
    assert b.cold is not None
    agent = b.ws.agent("cold")
    items = [{"agent": agent, "task": f"[[reply: fan-{k}]]"} for k in range(FAN_OUT)]
    started = time.perf_counter()
    answer = await call(b.cold, "dispatch_parallel", {"dispatches": items})
    elapsed = (time.perf_counter() - started) * 1000
    results = answer.get("results", [])
    got = [r.get("result") if r.get("success") else None for r in results]
    if got != [f"fan-{k}" for k in range(FAN_OUT)]:
        row.ok = False
        row.notes.append(f"results missing or wrong: {got}")
    # Containers are removed just after the answer, not before it: an orphan is one that is
    # still there once that removal has had its moment.
    deadline = time.monotonic() + ORPHAN_GRACE_S
    left = await anyio.to_thread.run_sync(b.engine.containers, agent)
    while left and time.monotonic() < deadline:
        await anyio.sleep(0.1)
        left = await anyio.to_thread.run_sync(b.engine.containers, agent)
    if left:
        row.ok = False
        row.notes.append(f"left behind: {[c.name for c in left]}")
    return elapsed


ORPHAN_GRACE_S = 5.0


async def measure_fan_out(b: Bench, cold_ms: float, base_ms: float) -> list[Row]:
    waves = math.ceil(FAN_OUT / MAX_CONCURRENCY)
    row = Row(f"fan-out {FAN_OUT} (dispatch_parallel)", [], kind="ratio",
              reference=f"{waves} x cold median", reference_ms=waves * cold_ms, target=1.2)
    host = Row(f"host claude -p x{FAN_OUT}, {MAX_CONCURRENCY} at a time", [], kind="ratio",
               reference=f"{waves} x baseline median", reference_ms=waves * base_ms,
               notes=["reference only: what this machine does with the same load and no "
                      "orchestrator"])
    rounds = max(2, b.rounds // 4)
    for i in range(rounds):
        for variant in rotate(["mcp", "host"], i):
            if variant == "mcp":
                row.samples_ms.append(await mcp_fan_out(b, row))
            else:
                host.samples_ms.append(await host_fan_out(b))
        b.say(f"fan-out round {i + 1}/{rounds}: dispatch_parallel {row.samples_ms[-1]:.0f} ms, "
              f"host {host.samples_ms[-1]:.0f} ms")
    if row.ok:
        row.notes.append(f"every round: {FAN_OUT} results in order, no container left "
                         f"(label {b.ws.agent('cold')})")
    return [row, host]


# --- 7: timeout kill ----------------------------------------------------------------------------


async def one_timeout(b: Bench, row: Row) -> tuple[float, float]:
    """(container seen running → gone, call → gone), in ms, for a run timed out after 3 s."""
    assert b.cold is not None
    client, agent = b.cold, b.ws.agent("cold")
    answer: dict[str, Any] = {}

    async def run() -> None:
        answer.update(await call(client, "dispatch", {
            "agent": agent, "task": "[[sleep: 600]] never answers",
            "timeout_seconds": TIMEOUT_S}, allow_error=True))

    started = time.perf_counter()
    running_at = gone_at = math.nan
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(DEADLINE_S):
            while True:
                seen = await anyio.to_thread.run_sync(b.engine.containers, agent)
                now = time.perf_counter()
                if math.isnan(running_at) and any(c.status == "running" for c in seen):
                    running_at = now
                if not math.isnan(running_at) and not seen:
                    gone_at = now
                    break
                await anyio.sleep(POLL_S)
    if answer.get("exit_reason") != "timeout":
        row.ok = False
        row.notes.append(f"exit_reason {answer.get('exit_reason')!r}, not 'timeout'")
    return (gone_at - running_at) * 1000, (gone_at - started) * 1000


async def measure_timeout(b: Bench) -> Row:
    row = Row(f"timeout kill ({TIMEOUT_S:g} s): running -> gone", [], kind="ms",
              target=(TIMEOUT_S + KILL_GRACE_S) * 1000)
    from_call: list[float] = []
    for i in range(max(1, b.rounds // 5)):
        gone, whole = await one_timeout(b, row)
        row.samples_ms.append(gone)
        from_call.append(whole)
        b.say(f"timeout round {i + 1}: container gone {gone:.0f} ms after it was seen running, "
              f"{whole:.0f} ms after the call")
    row.notes.append(f"from the dispatch call (container creation included): median "
                     f"{median(from_call):.0f} ms; containers polled every {POLL_S * 1000:.0f} ms")
    return row
