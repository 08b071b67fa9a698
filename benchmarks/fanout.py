"""Load and footprint: a fan-out of N dispatches at most four at a time (ours, the fixed
peer's, and N bare host runs with the same limit), and each server's idle memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from mcp import Client

from benchmarks.harness import call, children, serve, tree_rss_kib
from benchmarks.measures import (
    ANSWER,
    TASK,
    Bench,
    dispatch_ms,
    peer_call,
    peer_dispatch_ms,
    rotate,
)
from benchmarks.peer import peer_env, peer_serve
from benchmarks.report import Row

ORPHAN_GRACE_S = 5.0
SETTLE_S = 1.0


async def host_fan_out(b: Bench) -> float:
    """Reference: N bare host `claude -p`, at most ``max_concurrency`` at a time."""
    limiter = anyio.CapacityLimiter(b.max_concurrency)

    async def one(k: int) -> None:
        async with limiter:
            await b.host(f"fan-{k}", f"[[reply: fan-{k}]]")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(b.fan_out):
            tg.start_soon(one, k)
    return (time.perf_counter() - started) * 1000


def check_results(row: Row, results: list[dict[str, object]], n: int) -> None:
    got = [r.get("result") if r.get("success") else None for r in results]
    if got != [f"fan-{k}" for k in range(n)]:
        row.ok = False
        row.notes.append(f"results missing, wrong or out of order: {got}")


async def mcp_fan_out(b: Bench, row: Row) -> float:
    assert b.cold is not None
    agent = b.ws.agent("cold")
    items = [{"agent": agent, "task": f"[[reply: fan-{k}]]"} for k in range(b.fan_out)]
    started = time.perf_counter()
    answer = await call(b.cold, "dispatch_parallel", {"dispatches": items})
    elapsed = (time.perf_counter() - started) * 1000
    check_results(row, answer.get("results", []), b.fan_out)
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


async def peer_fan_out(b: Bench, row: Row) -> float:
    """The peer's own `dispatch_parallel` (its limit is the same `max_concurrency`)."""
    agent = b.peer_agent("fixed")
    items = [{"agent": agent, "task": f"[[reply: fan-{k}]]"} for k in range(b.fan_out)]
    started = time.perf_counter()
    answer = await peer_call(b.peers["fixed"], "dispatch_parallel",
                             {"dispatches": json.dumps(items)})
    elapsed = (time.perf_counter() - started) * 1000
    check_results(row, answer if isinstance(answer, list) else [], b.fan_out)
    return elapsed


async def measure_fan_out(b: Bench, cold_ms: float) -> list[Row]:
    n, limit = b.fan_out, b.max_concurrency
    waves = math.ceil(n / limit)
    host = Row("host_fan_out", f"host claude -p x{n}, {limit} at a time", [],
               notes=["reference: what this machine does with the same load and no "
                      "orchestrator"])
    peer = Row("peer_fan_out", f"agent-dispatch dispatch_parallel x{n}, stdin fixed", [],
               notes=[f"its `settings.max_concurrency: {limit}`"])
    ours = Row("fan_out", f"fan-out {n} (dispatch_parallel, {limit} at a time)", [])
    runs: dict[str, Callable[[], Awaitable[float]]] = {
        "ours": lambda: mcp_fan_out(b, ours), "peer": lambda: peer_fan_out(b, peer),
        "host": lambda: host_fan_out(b)}
    rows = {"ours": ours, "peer": peer, "host": host}
    rounds = max(2, b.rounds // 2) if b.rounds > 1 else 1
    for i in range(rounds):
        for variant in rotate(list(runs), i):
            rows[variant].samples.append(await runs[variant]())
        b.say(f"fan-out round {i + 1}/{rounds}: " + ", ".join(
            f"{k} {r.samples[-1]:.0f} ms" for k, r in rows.items()))
    for row in (ours, peer):
        row.kind, row.reference, row.reference_value = "ratio", "host x" + str(n), host.median
    ours.target, ours.peer_value = 1.1, peer.median
    ours.notes.append(f"{ours.median / (waves * cold_ms):.2f}x {waves} waves of the cold "
                      f"dispatch median")
    if ours.ok:
        ours.notes.append(f"every round: {n} results in order, no container left "
                          f"(label {b.ws.agent('cold')})")
    return [ours, peer, host]


# --- memory ---------------------------------------------------------------------------------


@asynccontextmanager
async def with_pid(server: AbstractAsyncContextManager[Client]) -> AsyncIterator[
        tuple[Client, int]]:
    """Enter an MCP stdio server's context and name the process it spawned."""
    before = children(os.getpid())
    async with server as client:
        spawned = children(os.getpid()) - before
        if len(spawned) != 1:
            raise RuntimeError(f"cannot tell the server's process among {sorted(spawned)}")
        yield client, spawned.pop()


async def idle_rss(b: Bench, variant: str) -> tuple[float, float]:
    """(own, with children) RSS in MiB of a fresh server after initialize, one dispatch and
    a settle of one second."""
    ws = b.ws
    if variant == "ours":
        server = serve(ws.server_env("rss", warm=1, cache=True), ws.log_file("rss"))
    else:
        server = peer_serve(peer_env(ws, b.claude, b.stub_url, "fixed", cache=True),
                            ws.root / "peer-rss.log")
    async with with_pid(server) as (client, pid):
        if variant == "ours":
            await dispatch_ms(client, ws.agent("rss"), TASK, ANSWER)
        else:
            b.peers["rss"] = client
            try:
                await peer_dispatch_ms(b, "rss", TASK, ANSWER)
            finally:
                del b.peers["rss"]
        await anyio.sleep(SETTLE_S)
        own, tree = tree_rss_kib(pid)
    return own / 1024, tree / 1024


async def measure_memory(b: Bench) -> list[Row]:
    samples: dict[str, list[tuple[float, float]]] = {"ours": [], "peer": []}
    rounds = max(1, min(3, b.rounds // 2))
    for i in range(rounds):
        for variant in rotate(list(samples), i):
            samples[variant].append(await idle_rss(b, variant))
        b.say(f"idle RSS round {i + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1][0]:.0f} MiB ({v[-1][1]:.0f} with children)" for k, v in samples.items()))
    rows = []
    for index, label in ((0, "own"), (1, "with children")):
        peer = Row(f"peer_rss_{index}", f"agent-dispatch server RSS idle ({label})",
                   [s[index] for s in samples["peer"]], unit="MiB")
        ours = Row(f"rss_{index}", f"serve RSS idle ({label})",
                   [s[index] for s in samples["ours"]], unit="MiB", peer_value=peer.median,
                   peer_target=1.0)
        rows += [ours, peer]
    rows[0].notes.append(f"fresh servers (ours: warm pool 1, cache on; the peer: cache on), "
                         f"initialize + one dispatch, then {SETTLE_S:g} s idle; VmRSS")
    return rows
