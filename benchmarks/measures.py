"""The single-call measurements of SPEC §10 and issue 11, each against a baseline taken in the
same run: the bare host `claude -p` and the fixed peer (agent-dispatch, stdin at /dev/null).

Variants alternate round by round (the order rotates) so machine noise hits them alike; the
first round of the dispatch comparison is a warm-up and is not kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from benchmarks.harness import (
    AD_SANDBOX,
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
from benchmarks.peer import PYTHON, SERVER, peer_body, peer_env
from benchmarks.report import Row, median
from orchestrator.runtime.gvisor import RUNSC, runsc_registered

TASK, ANSWER = "[[reply: ok]]", "ok"
TIMEOUT_S, KILL_GRACE_S = 3.0, 2.0
RUNSC_MISSING = "not measured: runsc not registered"


def runsc_skip(runtimes: Mapping[str, Any]) -> str:
    """Why the gVisor rows cannot be measured on an engine with these runtimes ('' if they
    can)."""
    return "" if runsc_registered(runtimes) else RUNSC_MISSING


@dataclass
class Bench:
    ws: Workspace
    engine: Engine
    claude: Path
    stub_url: str
    rounds: int
    say: Callable[[str], None]
    fan_out: int = 10
    max_concurrency: int = 4
    warm: Client | None = None
    cold: Client | None = None
    cache: Client | None = None
    warm_runsc: Client | None = None
    cold_runsc: Client | None = None
    runsc_skip: str = ""
    """Why the gVisor (runsc) rows are not measured; empty when they are."""
    peers: dict[str, Client] = field(default_factory=dict)
    """agent-dispatch servers: ``shipped``, ``fixed`` (cache off) and ``cache`` (fixed, on)."""

    async def host(self, expected: str = ANSWER, prompt: str = TASK,
                   one_core: bool = False) -> float:
        return await anyio.to_thread.run_sync(
            partial(host_claude, self.claude, self.stub_url, self.ws, prompt, expected, one_core))

    def peer_agent(self, variant: str) -> str:
        """The agent of a peer server (only the shipped one runs the unfixed variant)."""
        return self.ws.agent(f"peer-{'shipped' if variant == 'shipped' else 'fixed'}")


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


async def peer_call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    with anyio.fail_after(DEADLINE_S):
        return peer_body(await client.call_tool(tool, args))


async def peer_dispatch_ms(b: Bench, variant: str, task: str,
                           expected: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = await peer_call(b.peers[variant], "dispatch",
                             {"agent": b.peer_agent(variant), "task": task})
    elapsed = (time.perf_counter() - started) * 1000
    check_answer(answer, expected)
    return elapsed, answer


# --- 5: start-up -----------------------------------------------------------------------------


def measure_start(b: Bench) -> list[Row]:
    """Server spawn → initialize answered: ours, the peer's, and `python -c import mcp`."""
    ws = b.ws
    env = ws.server_env("start", warm=0, cache=True)
    penv = peer_env(ws, b.claude, b.stub_url, "fixed", cache=True)
    log, plog = ws.log_file("start"), ws.root / "peer-start.log"
    runs: dict[str, Callable[[], float]] = {
        "serve": lambda: serve_to_initialize(env, log, (AD_SANDBOX, "serve")),
        "peer": lambda: serve_to_initialize(penv, plog, (str(SERVER), "serve")),
        "mcp": python_import_mcp,
        "peer mcp": lambda: python_import_mcp(str(PYTHON)),
    }
    for run in runs.values():  # warm-up: page cache, state dir creation
        run()
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(b.rounds):
        for variant in rotate(list(runs), i):
            samples[variant].append(runs[variant]())
        b.say(f"start round {i + 1}/{b.rounds}: " + ", ".join(
            f"{k} {v[-1]:.0f} ms" for k, v in samples.items()))
    ref = Row("import_mcp", "python -c 'import mcp' (reference)", samples["mcp"])
    peer_ref = Row("peer_import_mcp", "its python -c 'import mcp' (reference)",
                   samples["peer mcp"], notes=["the peer's own virtualenv and mcp version"])
    peer = Row("peer_start", "agent-dispatch serve -> initialize", samples["peer"],
               kind="ratio", reference="its import mcp", reference_value=peer_ref.median)
    serve = Row("serve_start", "serve start -> initialize", samples["serve"], kind="ratio",
                reference="import mcp", reference_value=ref.median,
                peer_value=peer.median, peer_target=1.0,
                notes=["`import mcp` is the floor any Python MCP server pays (ours: mcp of "
                       "the project's venv; the peer has its own)"])
    return [serve, peer, ref, peer_ref]


# --- 1-3: bare, warm, cold, peer -------------------------------------------------------------


def runtime_of(container: Any) -> str:
    """The OCI runtime of an inspected container (the engine's default when unset)."""
    return str(container.attrs.get("HostConfig", {}).get("Runtime") or "runc")


async def warm_dispatch_ms(b: Bench, client: Client, agent: str, runtime: str) -> float:
    """A warm dispatch; it must run in the container that was waiting, under ``runtime``."""
    waiting = {c.id: runtime_of(c) for c in await anyio.to_thread.run_sync(
        b.engine.containers, agent)}
    elapsed, answer = await dispatch_ms(client, agent, TASK, ANSWER)
    ran = answer.get("container_id")
    if ran not in waiting:
        raise BenchError(f"the warm dispatch of {agent} did not run in the warm container")
    if waiting[ran] != runtime:
        raise BenchError(f"the warm container of {agent} runs under {waiting[ran]}, "
                         f"not {runtime}")
    return elapsed


async def watched_cold_dispatch_ms(b: Bench, client: Client, agent: str,
                                   runtime: str) -> float:
    """A cold dispatch while the agent's containers are polled: the one it ran in must be
    under ``runtime``. Only for the warm-up round, as the polling costs the engine time."""
    seen: dict[str, str] = {}
    answer: dict[str, Any] = {}
    elapsed = math.nan

    async def run() -> None:
        nonlocal elapsed
        elapsed, got = await dispatch_ms(client, agent, TASK, ANSWER)
        answer.update(got)
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(DEADLINE_S):
            while True:
                for c in await anyio.to_thread.run_sync(b.engine.containers, agent):
                    seen[c.id] = runtime_of(c)
                await anyio.sleep(POLL_S)
    ran = answer.get("container_id")
    if seen.get(str(ran)) != runtime:
        raise BenchError(f"the cold dispatch of {agent} ran in {ran}, seen under "
                         f"{seen.get(str(ran), 'no runtime (never seen)')}, not {runtime}")
    return elapsed


async def measure_dispatch(b: Bench) -> list[Row]:
    assert b.warm is not None and b.cold is not None
    warm_agent, cold_agent = b.ws.agent("warm"), b.ws.agent("cold")
    variants = ["bare", "warm", "cold", "one core", "peer fixed", "peer shipped"]
    pools: dict[str, tuple[Client, str]] = {"warm": (b.warm, warm_agent)}
    if not b.runsc_skip:
        assert b.warm_runsc is not None and b.cold_runsc is not None
        variants += ["warm runsc", "cold runsc"]
        pools["warm runsc"] = (b.warm_runsc, b.ws.agent("warm-runsc"))
    samples: dict[str, list[float]] = {k: [] for k in variants}
    refill: dict[str, list[float]] = {k: [] for k in pools}
    for i in range(b.rounds + 1):
        for variant in rotate(variants, i):
            # Untimed: the warm pools refilled after the last warm run, so nothing else runs.
            for pool, (client, agent) in pools.items():
                refill[pool].append(await wait_warm(client, agent))
            if variant in ("bare", "one core"):
                elapsed = await b.host(one_core=variant == "one core")
            elif variant in pools:
                client, agent = pools[variant]
                elapsed = await warm_dispatch_ms(b, client, agent,
                                                 RUNSC if variant == "warm runsc" else "runc")
            elif variant == "cold":
                elapsed, _ = await dispatch_ms(b.cold, cold_agent, TASK, ANSWER)
            elif variant == "cold runsc":
                assert b.cold_runsc is not None
                agent = b.ws.agent("cold-runsc")
                if i == 0:
                    elapsed = await watched_cold_dispatch_ms(b, b.cold_runsc, agent, RUNSC)
                else:
                    elapsed, _ = await dispatch_ms(b.cold_runsc, agent, TASK, ANSWER)
            else:
                elapsed, _ = await peer_dispatch_ms(b, variant.split()[1], TASK, ANSWER)
            if i > 0:
                samples[variant].append(elapsed)
        if i == 0:
            b.say("dispatch warm-up round done (not kept)")
        else:
            b.say(f"dispatch round {i}/{b.rounds}: " + ", ".join(
                f"{k} {v[-1]:.0f} ms" for k, v in samples.items()))
    base = Row("bare", "host claude -p (bare, baseline)", samples["bare"])
    bare: dict[str, Any] = {"kind": "ratio", "reference": "bare", "reference_value": base.median}
    peer = Row("peer_dispatch", "agent-dispatch dispatch, stdin fixed", samples["peer fixed"],
               **bare, notes=["the fair peer: its `claude` child gets stdin from /dev/null"])
    shipped = Row("peer_dispatch_shipped", "agent-dispatch dispatch, as shipped",
                  samples["peer shipped"], **bare,
                  notes=["`claude` inherits the server's stdin (the MCP pipe) and waits for it"])
    core = Row("one_core", "host claude -p on one core", samples["one core"], **bare,
               notes=["reference only: pinned with taskset, close to the agent containers' "
                      "default `cpus: 1` limit"])
    warm = Row("warm", "warm dispatch (MCP stdio)", samples["warm"], **bare, target=0.5,
               peer_value=peer.median, peer_target=1.0,
               notes=[f"pool refill waited (untimed) median "
                      f"{median(refill['warm']) * 1000:.0f} ms", "stretch target 0.35x bare"])
    cold = Row("cold", "cold dispatch (MCP stdio)", samples["cold"], **bare, target=1.6,
               peer_value=peer.median)
    gvisor = runsc_rows(samples, bare, warm, cold, peer, b.runsc_skip)
    if not b.runsc_skip:
        gvisor[0].notes.insert(0, f"pool refill waited (untimed) median "
                                  f"{median(refill['warm runsc']) * 1000:.0f} ms")
    for row in (warm, cold, *gvisor):
        if not row.skipped:
            row.notes.append(f"{row.median / core.median:.2f}x the one-core host run")
    return [base, warm, cold, *gvisor, peer, shipped, core]


def runsc_rows(samples: dict[str, list[float]], bare: dict[str, Any], warm: Row, cold: Row,
               peer: Row, skip: str) -> list[Row]:
    """Warm and cold dispatch of an agent with ``sandbox: {runtime: runsc}``, against the same
    under runc, the bare run and the peer; rows marked ``skip`` when not measured."""
    names = {"warm": "warm dispatch under runsc (MCP stdio)",
             "cold": "cold dispatch under runsc (MCP stdio)"}
    if skip:
        return [Row(f"{k}_runsc", name, [], skipped=skip) for k, name in names.items()]
    return [Row(f"{k}_runsc", names[k], samples[f"{k} runsc"], **bare, peer_value=peer.median,
                runc_value=runc.median,
                notes=["gVisor: the agent's container under runsc, otherwise as the " + k
                       + " row (same server settings, same task)"])
            for k, runc in (("warm", warm), ("cold", cold))]


# --- 4: cache hit ------------------------------------------------------------------------------


async def measure_cache(b: Bench) -> list[Row]:
    """Cache hits, ours and the peer's, alternated with the cheapest tool call of each (the
    MCP round-trip floor)."""
    assert b.cache is not None
    agent, task, expected = b.ws.agent("cache"), "[[reply: cached answer]]", "cached answer"
    _, first = await dispatch_ms(b.cache, agent, task, expected)
    _, peer_first = await peer_dispatch_ms(b, "cache", task, expected)
    if first.get("cached") or peer_first.get("cached"):
        raise BenchError("the first dispatch of the cache test was already a hit")
    samples: dict[str, list[float]] = {"ours": [], "floor": [], "peer": [], "peer floor": []}
    for i in range(max(10, 2 * b.rounds)):
        for variant in rotate(list(samples), i):
            started = time.perf_counter()
            if variant == "ours":
                _, answer = await dispatch_ms(b.cache, agent, task, expected)
            elif variant == "peer":
                _, answer = await peer_dispatch_ms(b, "cache", task, expected)
            elif variant == "floor":
                answer = {"cached": True}
                await call(b.cache, "cache_stats", {})
            else:
                answer = {"cached": True}
                await peer_call(b.peers["cache"], "cache_stats", {})
            samples[variant].append((time.perf_counter() - started) * 1000)
            if not answer.get("cached"):
                raise BenchError(f"expected a cache hit from {variant}, got {answer}")
    b.say("cache hits: " + ", ".join(f"{k} {median(v):.2f} ms" for k, v in samples.items()))
    floor = Row("mcp_floor", "MCP round trip: cache_stats", samples["floor"],
                notes=["reference: the cheapest tool call through the same client and server"])
    peer_floor = Row("peer_mcp_floor", "agent-dispatch round trip: cache_stats",
                     samples["peer floor"])
    peer = Row("peer_cache_hit", "agent-dispatch cache hit", samples["peer"], kind="ratio",
               reference="its cache_stats", reference_value=peer_floor.median,
               notes=["its cache is in memory, keyed on the task and config; it does not "
                      "look at the project"])
    ours = Row("cache_hit", "cache hit (MCP stdio)", samples["ours"], kind="value",
               reference="cache_stats", reference_value=floor.median,
               target=floor.median + 1.0, peer_value=peer.median,
               notes=["target: the MCP round trip + 1 ms; the same task again after one miss"])
    return [ours, peer, floor, peer_floor]


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
    row = Row("timeout_kill", f"timeout kill ({TIMEOUT_S:g} s): running -> gone", [],
              kind="value", target=(TIMEOUT_S + KILL_GRACE_S) * 1000,
              notes=["ours only: the peer clamps a timeout to at least 10 s"])
    from_call: list[float] = []
    for i in range(max(1, b.rounds // 5)):
        gone, whole = await one_timeout(b, row)
        row.samples.append(gone)
        from_call.append(whole)
        b.say(f"timeout round {i + 1}: container gone {gone:.0f} ms after it was seen running, "
              f"{whole:.0f} ms after the call")
    row.notes.append(f"from the dispatch call (container creation included): median "
                     f"{median(from_call):.0f} ms; containers polled every {POLL_S * 1000:.0f} ms")
    return row
