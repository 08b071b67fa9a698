"""StateStore: every method, plus real cross-process and cross-thread safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.errors import AdSandboxError, RunNotFound, UsageError
from orchestrator.models import RunRecord, RunStatus
from orchestrator.state import SCHEMA_VERSION, StateStore, percentile, pid_alive
from orchestrator.state.slots import WAITER_STALE_S

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

SPAWN = mp.get_context("spawn")
DEADLINE_S = 20.0


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = StateStore(tmp_path / "state" / "state.db")
    yield s
    s.close()


def dead_pid() -> int:
    """A pid that belonged to a process which has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=DEADLINE_S)
    return proc.pid


# ---------------------------------------------------------------- files and schema


def test_creates_private_dir_and_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.db"
    StateStore(path).close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_path_follows_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "sd"))
    with StateStore() as s:
        assert s.path == tmp_path / "sd" / "state.db"
    assert s.path.exists()


def test_schema_is_wal_versioned_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        s.insert_run(RunRecord(run_id="r1", agent="a"))
    with StateStore(path) as s:
        assert s.get_run("r1").agent == "a"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(AdSandboxError, match="newer"):
        StateStore(path)


def test_closed_store_refuses_use(store: StateStore) -> None:
    store.close()
    with pytest.raises(AdSandboxError, match="closed"):
        store.list_runs()


# ---------------------------------------------------------------- runs


def test_insert_get_update_run(store: StateStore) -> None:
    rec = RunRecord(run_id="abc123", agent="coder", task="fix it")
    store.insert_run(rec)
    assert store.get_run("abc123") == rec
    with pytest.raises(UsageError, match="already exists"):
        store.insert_run(rec)
    new = store.update_run("abc123", status="finished", success=True, cost_usd=0.5,
                           finished_at=rec.created_at + 2)
    assert new.status == "finished" and new.success and new.task == "fix it"
    assert store.get_run("abc123") == new
    assert store.list_runs(status="finished")[0].run_id == "abc123"


def test_update_run_rejects_unknown_missing_and_invalid(store: StateStore) -> None:
    store.insert_run(RunRecord(run_id="r", agent="a"))
    with pytest.raises(TypeError):
        store.update_run("r", nonsense=1)
    with pytest.raises(ValueError):
        store.update_run("r", status="bogus")
    with pytest.raises(RunNotFound) as err:
        store.update_run("missing", status="running")
    assert err.value.hint and "jobs" in err.value.hint
    assert store.get_run("r").status == "queued"  # the failed updates rolled back


def test_get_run_missing(store: StateStore) -> None:
    with pytest.raises(RunNotFound, match="nope"):
        store.get_run("nope")


def test_find_run_by_prefix(store: StateStore) -> None:
    for rid in ("aa11", "aa22", "bb33"):
        store.insert_run(RunRecord(run_id=rid, agent="x"))
    assert store.find_run("bb").run_id == "bb33"
    assert store.find_run("aa11").run_id == "aa11"
    with pytest.raises(UsageError, match="several"):
        store.find_run("aa")
    with pytest.raises(RunNotFound):
        store.find_run("zz")
    with pytest.raises(UsageError):
        store.find_run("")


def test_list_runs_newest_first_with_filters(store: StateStore) -> None:
    rows: list[tuple[str, RunStatus]] = [("a", "running"), ("b", "finished"), ("a", "finished")]
    for i, (agent, status) in enumerate(rows):
        store.insert_run(RunRecord(run_id=f"r{i}", agent=agent, status=status,
                                   created_at=1000.0 + i))
    assert [r.run_id for r in store.list_runs()] == ["r2", "r1", "r0"]
    assert [r.run_id for r in store.list_runs(agent="a")] == ["r2", "r0"]
    assert [r.run_id for r in store.list_runs(agent="a", status="finished")] == ["r2"]
    assert [r.run_id for r in store.list_runs(limit=1)] == ["r2"]
    assert [r.run_id for r in store.unfinished_runs()] == ["r0"]


def test_gc_runs_removes_only_old_finished(store: StateStore) -> None:
    now = time.time()
    store.insert_run(RunRecord(run_id="old", agent="a", status="finished",
                               created_at=now - 10_000, finished_at=now - 9_000))
    store.insert_run(RunRecord(run_id="oldrunning", agent="a", status="running",
                               created_at=now - 10_000))
    store.insert_run(RunRecord(run_id="new", agent="a", status="finished", finished_at=now))
    store.add_cost("old", "old", 1.0, 1, 1, at=now - 3 * 86400)
    store.add_cost("new", "new", 2.0, 1, 1, at=now - 3 * 86400)
    assert store.gc_runs(3600) == 1
    assert {r.run_id for r in store.list_runs()} == {"oldrunning", "new"}
    assert store.spent_run("old") == 0.0  # old ledger rows of deleted runs go too
    assert store.spent_run("new") == 2.0


def test_update_run_from_threads_loses_nothing(store: StateStore) -> None:
    store.insert_run(RunRecord(run_id="t", agent="a"))
    fields = ["input_tokens", "output_tokens", "num_turns", "duration_ms"]
    errors: list[BaseException] = []

    def bump(field: str) -> None:
        try:
            for i in range(1, 31):
                store.update_run("t", **{field: i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(f,)) for f in fields]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert not errors
    rec = store.get_run("t")
    assert all(getattr(rec, f) == 30 for f in fields), rec


# ---------------------------------------------------------------- container leases


def test_container_lifecycle(store: StateStore) -> None:
    me = os.getpid()
    store.add_container("c1", agent="a", owner_pid=me, lease_s=60, image="img:1")
    store.add_container("c2", agent="a", owner_pid=me, lease_s=60, image="img:2")
    store.add_container("c3", agent="b", owner_pid=me, lease_s=60, image="img:1")
    assert store.claim_warm("a", run_id="r1", owner_pid=me, lease_s=30, image="img:1") == "c1"
    assert store.claim_warm("a", run_id="r2", owner_pid=me, lease_s=30, image="img:1") is None
    [c1] = store.containers(state="claimed")
    assert (c1.container_id, c1.run_id, c1.agent) == ("c1", "r1", "a")
    assert [c.container_id for c in store.containers(agent="a")] == ["c1", "c2"]
    before = c1.lease_until
    store.renew_lease("c1", 600)
    assert store.containers(state="claimed")[0].lease_until > before
    store.set_container_state("c1", "running")
    assert store.containers(state="running")[0].run_id == "r1"  # run kept when not given
    store.set_container_state("c1", "done", run_id="r9")
    assert store.containers(state="done")[0].run_id == "r9"
    store.remove_container("c1")
    assert [c.container_id for c in store.containers()] == ["c2", "c3"]
    store.renew_lease("gone", 10)  # untracked: no error


def test_claim_skips_expired_and_dead_owned(store: StateStore) -> None:
    store.add_container("expired", agent="a", owner_pid=os.getpid(), lease_s=-1, image="i")
    store.add_container("orphan", agent="a", owner_pid=dead_pid(), lease_s=60, image="i")
    assert store.claim_warm("a", run_id="r", owner_pid=os.getpid(), lease_s=5, image="i") is None
    store.add_container("ok", agent="a", owner_pid=os.getpid(), lease_s=60, image="i")
    assert store.claim_warm("a", run_id="r", owner_pid=os.getpid(), lease_s=5, image="i") == "ok"


def test_expired_or_orphaned(store: StateStore) -> None:
    now = time.time()
    store.add_container("fine", agent="a", owner_pid=1, lease_s=60)
    store.add_container("expired", agent="a", owner_pid=1, lease_s=-5)
    store.add_container("orphan", agent="a", owner_pid=2, lease_s=60)
    store.add_container("done", agent="a", owner_pid=1, lease_s=60, state="claimed", run_id="r")
    store.insert_run(RunRecord(run_id="r", agent="a", status="finished"))
    found = store.expired_or_orphaned(now, alive=lambda pid: pid == 1)
    assert sorted(c.container_id for c in found) == ["done", "expired", "orphan"]


def _claim_worker(path: str, ready: Any, go: Any, out: Any) -> None:
    store = StateStore(Path(path))
    ready.put(os.getpid())
    go.wait(DEADLINE_S)
    got: list[str] = []
    while (cid := store.claim_warm("a", run_id=f"run-{os.getpid()}-{len(got)}",
                                   owner_pid=os.getpid(), lease_s=60, image="i")) is not None:
        got.append(cid)
    out.put(got)
    store.close()


def _start_all(target: Any, args: tuple[Any, ...], n: int) -> tuple[list[Any], Any]:
    """Start ``n`` spawn processes, wait until each is ready, then release them together."""
    ready, go, out = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, ready, go, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=DEADLINE_S)
    go.set()
    return procs, out


def _collect(procs: list[Any], out: Any) -> list[Any]:
    results = [out.get(timeout=DEADLINE_S) for _ in procs]
    for p in procs:
        p.join(DEADLINE_S)
        assert p.exitcode == 0
    return results


def test_claim_warm_across_processes_never_double_claims(store: StateStore) -> None:
    pool = [f"c{i:03d}" for i in range(120)]
    for cid in pool:
        store.add_container(cid, agent="a", owner_pid=os.getpid(), lease_s=120, image="i")
    procs, out = _start_all(_claim_worker, (str(store.path),), 4)
    claimed = [cid for got in _collect(procs, out) for cid in got]
    assert len(claimed) == len(set(claimed)), "a container was claimed twice"
    assert sorted(claimed) == pool
    assert {c.state for c in store.containers()} == {"claimed"}


# ---------------------------------------------------------------- slots and queue


def test_slots_limit_and_release(store: StateStore) -> None:
    me = os.getpid()
    assert store.acquire_slot("r1", owner_pid=me, limit=2)
    assert store.acquire_slot("r1", owner_pid=me, limit=2)  # idempotent for a holder
    assert store.acquire_slot("r2", owner_pid=me, limit=2)
    assert not store.acquire_slot("r3", owner_pid=me, limit=2)
    assert store.slot_holders() == ["r1", "r2"]
    store.release_slot("r1")
    assert store.acquire_slot("r3", owner_pid=me, limit=2)


def test_slot_of_dead_pid_is_freed(store: StateStore) -> None:
    assert store.acquire_slot("ghost", owner_pid=dead_pid(), limit=1)
    assert store.acquire_slot("live", owner_pid=os.getpid(), limit=1)
    assert store.slot_holders() == ["live"]


def test_queue_is_fifo(store: StateStore) -> None:
    me = os.getpid()
    assert store.acquire_slot("holder", owner_pid=me, limit=1)
    store.enqueue("first", me)
    store.enqueue("second", me)
    store.enqueue("first", me)  # re-registering keeps the place
    assert (store.queue_position("first"), store.queue_position("second")) == (1, 2)
    assert store.queue_position("holder") == 0
    store.release_slot("holder")
    assert not store.acquire_slot("second", owner_pid=me, limit=1)  # first is ahead
    assert not store.acquire_slot("outsider", owner_pid=me, limit=1)
    assert store.acquire_slot("first", owner_pid=me, limit=1)
    assert store.queue_position("first") == 0  # a granted waiter leaves the queue
    assert store.queue_position("second") == 1
    store.dequeue("second")
    assert store.queue_position("second") == 0


def test_dead_or_stale_waiters_do_not_block(store: StateStore) -> None:
    me = os.getpid()
    store.enqueue("dead", dead_pid())
    store.enqueue("stale", me)
    store._db.conn().execute(
        "UPDATE waiters SET seen_at = ? WHERE run_id = 'stale'", (time.time() - WAITER_STALE_S - 1,)
    )
    assert store.queue_position("stale") == 0
    assert store.acquire_slot("me", owner_pid=me, limit=1)


def test_zombie_and_pid_edge_cases() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive(None)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + DEADLINE_S
        # Not reaped yet, so it lingers as a zombie once it exits.
        while pid_alive(proc.pid):
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.01)
        assert Path(f"/proc/{proc.pid}").exists()
    finally:
        proc.wait(timeout=DEADLINE_S)
    if os.path.exists("/proc/1"):
        assert pid_alive(1)  # init: exists even when we may not signal it


def _slot_worker(
    path: str, rounds: int, holding: Synchronized[int], peak: Synchronized[int],
    ready: Any, go: Any, out: Any,
) -> None:
    store = StateStore(Path(path))
    ready.put(os.getpid())
    go.wait(DEADLINE_S)
    deadline = time.monotonic() + DEADLINE_S
    for i in range(rounds):
        rid = f"{os.getpid()}-{i}"
        store.enqueue(rid, os.getpid())
        while not store.acquire_slot(rid, owner_pid=os.getpid(), limit=2):
            if time.monotonic() > deadline:
                out.put("timeout")
                return
        with holding.get_lock():
            holding.value += 1
            peak.value = max(peak.value, holding.value)
        time.sleep(0.001)  # hold the slot briefly so holders overlap
        with holding.get_lock():
            holding.value -= 1
        store.release_slot(rid)
    out.put("ok")
    store.close()


def test_acquire_slot_across_processes_never_exceeds_limit(store: StateStore) -> None:
    holding, peak = SPAWN.Value("i", 0), SPAWN.Value("i", 0)
    procs, out = _start_all(_slot_worker, (str(store.path), 25, holding, peak), 4)
    assert _collect(procs, out) == ["ok"] * 4
    assert 1 <= peak.value <= 2
    assert store.slot_holders() == []


# ---------------------------------------------------------------- ledger


def test_ledger_sums(store: StateStore) -> None:
    store.add_cost("r1", "root", 0.25, 100, 10, at=1000.0)
    store.add_cost("r1", "root", 0.50, 200, 20, at=2000.0)
    store.add_cost("r2", "root", 1.00, 300, 30, at=3000.0)
    store.add_cost("x", "other", 2.00, 1, 1)
    assert store.spent_run("r1") == pytest.approx(0.75)
    assert store.spent_root("root") == pytest.approx(1.75)
    assert store.spent_since(2000.0) == pytest.approx(3.5)
    assert store.spent_since(time.time() - 60) == pytest.approx(2.0)
    assert store.tokens_run("r1") == (300, 30)
    assert store.spent_run("none") == 0.0


# ---------------------------------------------------------------- cache


def test_cache_ttl_and_stats(store: StateStore) -> None:
    store.cache_put("k", '{"v": 1}', ttl_s=10, now=1000.0)
    assert store.cache_get("k", now=1005.0) == '{"v": 1}'
    assert store.cache_get("k", now=1010.0) is None
    assert store.cache_get("k", now=1005.0) is None  # an expired entry is deleted
    assert store.cache_get("absent") is None
    store.cache_put("a", "1", ttl_s=100, now=1000.0)
    store.cache_put("b", "2", ttl_s=1, now=1000.0)
    store.cache_put("a", "3", ttl_s=100, now=1000.0)  # replace
    assert store.cache_get("a", now=1001.0) == "3"
    store.cache_note(True)
    store.cache_note(True)
    store.cache_note(False)
    stats = store.cache_stats(now=1050.0)
    assert stats == {"entries": 1, "hits": 2, "misses": 1, "expired": 2,
                     "hit_rate": pytest.approx(2 / 3)}
    assert store.cache_clear() == 2
    assert store.cache_stats()["hits"] == 0 and store.cache_stats()["entries"] == 0


# ---------------------------------------------------------------- stats


def _finished(rid: str, agent: str, *, ok: bool, ms: int, cost: float, **kw: Any) -> RunRecord:
    return RunRecord(run_id=rid, agent=agent, status="finished", success=ok, duration_ms=ms,
                     cost_usd=cost, exit_reason=kw.pop("exit_reason", "completed"), **kw)


def test_stats_and_typical(store: StateStore) -> None:
    for i, ms in enumerate([100, 200, 300, 400, 1000]):
        store.insert_run(_finished(f"s{i}", "a", ok=True, ms=ms, cost=0.1 * (i + 1)))
    store.insert_run(_finished("t", "a", ok=False, ms=5000, cost=0.2, exit_reason="timeout"))
    store.insert_run(_finished("e", "a", ok=False, ms=50, cost=0.0))
    store.insert_run(_finished("c", "a", ok=True, ms=1, cost=0.0, cached=True))
    store.insert_run(RunRecord(run_id="q", agent="b"))
    store.insert_run(_finished("old", "b", ok=True, ms=10, cost=9.0, created_at=10.0))
    store.add_cost("s0", "s0", 0.1, 1, 1)
    out = store.stats()
    a = out["agents"]["a"]
    assert (a["runs"], a["successes"], a["cached"]) == (8, 6, 1)
    assert a["failures"] == {"timeout": 1, "error": 1}
    assert a["cost_usd"] == pytest.approx(1.7)
    assert (a["median_ms"], a["p90_ms"]) == (300, 5000)
    assert out["agents"]["b"]["unfinished"] == 1
    assert out["total"]["runs"] == 10 and out["total"]["metered_usd"] == pytest.approx(0.1)
    assert "b" in store.stats(since=5.0)["agents"]
    assert store.stats(since=time.time() + 60)["agents"] == {}
    typical_ms, cost = store.typical("a")
    assert typical_ms == 300 and cost == pytest.approx(0.3)
    assert store.typical("nobody") == (None, None)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 11)], 90) == 9.0
    assert percentile([5.0], 90) == 5.0


def test_threads_each_get_a_connection(store: StateStore) -> None:
    seen: queue.Queue[int] = queue.Queue()

    def work() -> None:
        seen.put(id(store._db.conn()))
        store.add_cost("r", "r", 1.0, 0, 0)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert len({seen.get_nowait() for _ in threads}) == 3
    assert store.spent_run("r") == 3.0


def test_opening_while_another_process_writes(tmp_path: Path) -> None:
    """A second store opening while the first holds a write transaction waits its turn
    (two `serve` processes starting together on a new state file)."""
    path = tmp_path / "state.db"
    first = StateStore(path)
    holding, release = threading.Event(), threading.Event()

    def hold_a_write() -> None:
        with first._db.write() as conn:
            conn.execute("DELETE FROM slots WHERE run_id = ?", ("nobody",))
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_write)
    holder.start()
    assert holding.wait(10)
    threading.Timer(0.5, release.set).start()
    try:
        second = StateStore(path)  # "database is locked" here before the fix
        second.insert_run(RunRecord(agent="second"))
    finally:
        release.set()
        holder.join(10)
    assert second.list_runs(agent="second")
    second.close()
    first.close()

