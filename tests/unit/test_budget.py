"""Budget holds: the bound arithmetic, the ledger's reserve/settle across threads and
processes, and the relay forwarding capped requests to the stub model."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from orchestrator.gateway.budget import (
    BYTES_PER_TOKEN,
    DOCUMENT_TOKENS,
    INPUT_OVERHEAD_TOKENS,
    MEDIA_TOKENS,
    MIN_OUTPUT_TOKENS,
    Ask,
    BadBody,
    Hold,
    ask_of,
    capped_body,
    input_token_bound,
    parse_body,
)
from orchestrator.gateway.ledger_gate import LedgerGate
from orchestrator.gateway.pricing import PriceTable, Usage
from orchestrator.gateway.server import GatewayServer, create_gateway_app
from orchestrator.gateway.tokens import RunTokens, TokenInfo
from orchestrator.state import StateStore
from orchestrator.state.ledger import Limits
from orchestrator.stub.server import StubServer

WAIT = 20.0
INFO = TokenInfo(run_id="r1", root_id="r0", agent="coder", depth=1, caller="root")
OPEN = Limits(run=100.0, root=100.0, daily=100.0, day_since=0.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state.db") as opened:
        yield opened


def ledger_total(store: StateStore) -> float:
    return store.spent_since(0.0)


# --- the bound ---------------------------------------------------------------------------------


def test_grant_cuts_output_to_what_is_left() -> None:
    ask = Ask("m", input_usd=0.002, usd_per_output_token=0.000001, max_tokens=10_000)
    assert ask.grant(1.0) == (10_000, pytest.approx(0.012))  # type: ignore[comparison-overlap]
    tokens, usd = ask.grant(0.005) or (0, 0.0)
    assert tokens == 3_000 and usd == pytest.approx(0.005)
    assert ask.grant(0.002 + (MIN_OUTPUT_TOKENS - 1) * 0.000001) is None  # under the floor
    assert ask.grant(0.001) is None and ask.grant(0.0) is None
    small = Ask("m", 0.0001, 0.000001, max_tokens=5)
    # Asked for less than the floor: the floor is what it asked.
    assert small.grant(0.0002) == (5, pytest.approx(0.000105))  # type: ignore[comparison-overlap]
    counting = Ask("m", 0.0, 0.0, None)
    assert counting.grant(0.01) == (0, 0.0) and counting.grant(0.0) is None


def test_input_bound_counts_bytes_overhead_and_media() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {}},
        {"type": "tool_result", "content": [{"type": "image"}, {"type": "document"}]},
    ]}]}
    bound = input_token_bound(body, 1000)
    assert bound == (1000 // BYTES_PER_TOKEN + INPUT_OVERHEAD_TOKENS + 2 * MEDIA_TOKENS
                     + DOCUMENT_TOKENS)


def test_ask_prices_the_worst_input_and_long_context() -> None:
    prices = PriceTable({"m": (1.0, 2.0)})
    body = {"model": "m", "max_tokens": 100, "messages": []}
    ask = ask_of(body, 2000, prices, counting=False)
    tokens = 2000 // BYTES_PER_TOKEN + INPUT_OVERHEAD_TOKENS
    assert ask.input_usd == pytest.approx(tokens * 1.0 * 1.25 / 1e6)  # as cache writes
    hour = {**body, "system": [{"type": "text", "text": "x",
                                "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    assert ask_of(hour, 2000, prices, counting=False).input_usd == pytest.approx(
        tokens * 1.0 * 2.0 / 1e6)  # as hour-long cache writes
    assert ask.usd_per_output_token == pytest.approx(2.0 / 1e6)
    huge = ask_of(body, 1_000_000, prices, counting=False)
    assert huge.usd_per_output_token == pytest.approx(3.0 / 1e6)  # long-context premium
    assert ask_of(body, 10, prices, counting=True).max_tokens is None
    for bad in (None, 0, -1, True, "9", 1.5):
        with pytest.raises(BadBody):
            ask_of({**body, "max_tokens": bad}, 10, prices, counting=False)


def test_parse_body_rejects_what_cannot_be_bounded() -> None:
    for raw in (b"", b"[1]", b"{", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(BadBody):
            parse_body(raw)
    # A duplicate key is read once, and the forwarded bytes say only what was read.
    body = parse_body(b'{"max_tokens": 1, "max_tokens": 99999, "model": "m"}')
    assert json.loads(capped_body(body, Hold(1, 0.1, 50))) == {"max_tokens": 50, "model": "m"}


def test_capped_body_shrinks_or_drops_thinking() -> None:
    body = {"max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 31999}}
    assert json.loads(capped_body(body, Hold(1, 0.1, 5000)))["thinking"]["budget_tokens"] == 4999
    assert "thinking" not in json.loads(capped_body(body, Hold(1, 0.1, 1000)))
    assert json.loads(capped_body(body, Hold(1, 0.1, None))) == body


def test_cost_prices_hour_cache_writes_and_long_context() -> None:
    table = PriceTable({"m": (1.0, 10.0)})
    usage = Usage(input_tokens=100, cache_creation_input_tokens=1000,
                  cache_creation_1h_input_tokens=400, output_tokens=10)
    assert table.cost("m", usage) == pytest.approx((100 + 600 * 1.25 + 400 * 2.0 + 100) / 1e6)
    long = Usage(input_tokens=300_000, output_tokens=1000)
    assert table.cost("m", long) == pytest.approx((300_000 * 2.0 + 1000 * 15.0) / 1e6)


# --- the ledger --------------------------------------------------------------------------------


def test_reserve_counts_spend_and_holds_at_every_level(store: StateStore) -> None:
    store.add_cost("r1", "r0", 0.004, 1, 1)
    store.add_cost("other", "r0", 0.003, 1, 1)
    store.add_cost("far", "far", 0.5, 1, 1)
    limits = Limits(run=0.01, root=0.02, daily=1.0, day_since=0.0)
    first = store.reserve("r1", "r0", limits, lambda left: left)
    assert first.id is not None and first.usd == pytest.approx(0.006)
    assert store.held_run("r1") == pytest.approx(0.006)
    refused = store.reserve("r1", "r0", limits, lambda left: 0.0001)
    assert refused.id is None and refused.headroom.tightest.name == "run"
    root = store.reserve("r2", "r0", limits, lambda left: left)  # a sibling: root is tightest
    assert root.usd == pytest.approx(0.02 - 0.007 - 0.006)
    assert store.reserve("r3", "x", limits, lambda left: 2.0).id is None  # more than left
    store.release(first.id)
    assert store.held_run("r1") == 0.0
    store.reserve("r1", "r0", limits, lambda left: left)
    store.release_holds("r1")  # the run ended with a hold whose answer never streamed
    assert store.held_run("r1") == 0.0 and store.held_run("r2") > 0


def test_settle_books_at_most_the_hold_and_flags_overruns(store: StateStore) -> None:
    hold = store.reserve("r1", "r0", OPEN, lambda left: 0.01)
    booked = store.settle(hold.id, "r1", "r0", held_usd=0.01, metered_usd=9.0,
                          input_tokens=10**9, output_tokens=10**9, complete=True)
    assert booked == 0.01 and store.spent_run("r1") == pytest.approx(0.01)
    [overrun] = store.overruns("r1")
    assert (overrun.held_usd, overrun.metered_usd) == (0.01, 9.0)
    hold = store.reserve("r1", "r0", OPEN, lambda left: 0.01)
    assert store.settle(hold.id, "r1", "r0", held_usd=0.01, metered_usd=0.002,
                        input_tokens=1, output_tokens=1, complete=True) == 0.002
    hold = store.reserve("r1", "r0", OPEN, lambda left: 0.01)
    # Cut off before the final usage: billed output is unknown, so the hold is booked.
    assert store.settle(hold.id, "r1", "r0", held_usd=0.01, metered_usd=0.0001,
                        input_tokens=1, output_tokens=1, complete=False) == 0.01
    assert store.held_run("r1") == 0.0 and len(store.overruns()) == 1


def test_holds_of_dead_processes_and_expired_holds_are_dropped(store: StateStore) -> None:
    limits = Limits(run=0.01, root=1.0, daily=1.0, day_since=0.0)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(child.stdout)
    with store._db.write() as conn:
        conn.execute("INSERT INTO ledger_holds (run_id, root_id, usd, owner_pid, created_at, "
                     "expires_at) VALUES ('r1', 'r0', 0.01, ?, ?, ?)",
                     (dead_pid, time.time(), time.time() + 3600))
    assert store.held_run("r1") == 0.01
    assert store.reserve("r1", "r0", limits, lambda left: left).usd == pytest.approx(0.01)
    assert store.reserve("r1", "r0", limits, lambda left: left).id is None  # alive: kept
    with store._db.write() as conn:
        conn.execute("UPDATE ledger_holds SET expires_at = 0")
    assert store.reserve("r1", "r0", limits, lambda left: left).id is not None


def _reserve_many(path: str, count: int, start: Any) -> None:
    start.wait(WAIT)
    with StateStore(Path(path)) as own:
        limits = Limits(run=0.05, root=1.0, daily=1.0, day_since=0.0)
        for _ in range(count):
            own.reserve("r1", "r0", limits, lambda left: 0.003 if left >= 0.003 else None)


def test_holds_never_pass_the_budget_across_processes_and_threads(store: StateStore) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    procs = [context.Process(target=_reserve_many, args=(str(store.path), 10, start))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    thread_start = threading.Event()

    def in_thread() -> None:
        thread_start.wait(WAIT)
        _reserve_many(str(store.path), 10, start)

    threads = [threading.Thread(target=in_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.set()
    thread_start.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    for thread in threads:
        thread.join(60)
    conn = store._db.conn()
    # 80 tries of $0.003 against $0.05: exactly 16 fit, never a 17th.
    assert conn.execute("SELECT COUNT(*) FROM ledger_holds").fetchone()[0] == 16
    assert store.held_run("r1") <= 0.05 + 1e-12
    ours = conn.execute("SELECT COUNT(*) FROM ledger_holds WHERE owner_pid = ?",
                        (os.getpid(),)).fetchone()[0]
    # The children exited, so their holds go on the next reserve; this process's stay.
    store.reserve("x", "x", OPEN, lambda left: 0.0)
    assert store.held_run("r1") == pytest.approx(ours * 0.003)


# --- the relay over a real ledger and the stub model ----------------------------------------


class Refusals:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, info: TokenInfo, reason: str) -> None:
        self.reasons.append(reason)


@pytest.fixture
def relay(store: StateStore) -> Iterator[tuple[str, str, StubServer, Refusals]]:
    refusals = Refusals()
    limits = Limits(run=0.01, root=5.0, daily=50.0, day_since=0.0)
    gate = LedgerGate(store, limits=lambda info: limits, on_refused=refusals)
    with StubServer() as stub:
        tokens = RunTokens()
        app = create_gateway_app(tokens=tokens, upstream=stub.url, credential=None,
                                 budget=gate, prices={"m": (1.0, 1.0)})
        with GatewayServer(app, "127.0.0.1") as server:
            yield server.url, tokens.issue(INFO), stub, refusals


def post(url: str, token: str, text: str, max_tokens: int, *, stream: bool = False,
         **extra: Any) -> httpx.Response:
    body = {"model": "m", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{url}/v1/messages?beta=true", json=body, timeout=WAIT,
                      headers={"x-api-key": token, "anthropic-version": "2023-06-01"})


def wait_settled(store: StateStore) -> None:
    deadline = time.monotonic() + WAIT
    while store._db.conn().execute("SELECT COUNT(*) FROM ledger_holds").fetchone()[0]:
        assert time.monotonic() < deadline, "holds never settled"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
def test_relay_caps_max_tokens_and_books_at_most_the_hold(
    relay: tuple[str, str, StubServer, Refusals], store: StateStore, stream: bool
) -> None:
    url, token, stub, _ = relay
    answer = post(url, token, "[[usage: 900000000 900000000]] hi", 1_000_000, stream=stream,
                  thinking={"type": "enabled", "budget_tokens": 999_999})
    assert answer.status_code == 200
    forwarded = stub.received[-1]["body"]
    assert MIN_OUTPUT_TOKENS <= forwarded["max_tokens"] < 10_000
    assert forwarded["thinking"]["budget_tokens"] == forwarded["max_tokens"] - 1
    wait_settled(store)
    assert store.spent_run("r1") <= 0.01 + 1e-12
    assert len(store.overruns("r1")) == 1


def test_relay_holds_thirty_concurrent_requests_within_the_budget(
    relay: tuple[str, str, StubServer, Refusals], store: StateStore
) -> None:
    url, token, _stub, refusals = relay
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = post(url, token, "[[sleep: 1]] [[usage: 20000 20000]] x", 4096).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(set(statuses)) == [200, 402] and 1 <= statuses.count(200) <= 3
    assert len(refusals.reasons) == statuses.count(402)
    assert "held by requests in flight" in refusals.reasons[0]
    wait_settled(store)
    assert store.spent_run("r1") <= 0.01 + 1e-12


def test_relay_releases_unbilled_errors_and_refuses_bad_bodies(
    relay: tuple[str, str, StubServer, Refusals], store: StateStore
) -> None:
    url, token, stub, _ = relay
    assert post(url, token, "[[status: 529]] busy", 100).status_code == 529
    wait_settled(store)
    assert store.spent_run("r1") == 0.0
    headers = {"x-api-key": token}
    bad = httpx.post(f"{url}/v1/messages", content=b"not json", headers=headers, timeout=WAIT)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{url}/v1/messages", json={"model": "m", "messages": []},
                         headers=headers, timeout=WAIT)
    assert missing.status_code == 400 and "max_tokens" in missing.text
    assert len(stub.received) == 1


def test_relay_books_the_hold_when_the_client_hangs_up(
    relay: tuple[str, str, StubServer, Refusals], store: StateStore
) -> None:
    url, token, _stub, _ = relay
    body = {"model": "m", "max_tokens": 2000, "stream": True,
            "messages": [{"role": "user", "content": "[[sleep: 30]] [[usage: 5 5]] x"}]}
    with httpx.stream("POST", f"{url}/v1/messages", json=body, timeout=WAIT,
                      headers={"x-api-key": token}) as answer:
        next(answer.iter_raw())  # message_start, then the model "keeps generating"
    wait_settled(store)
    held = store._db.conn().execute("SELECT usd FROM ledger WHERE run_id = 'r1'").fetchone()[0]
    assert held > PriceTable({"m": (1.0, 1.0)}).cost("m", Usage(5, 5))


def test_a_requests_root_budget_lowers_the_trees_limit_never_raises_it() -> None:
    """A pipeline's ``--budget`` is the root limit every one of its runs is held against."""
    from orchestrator.config import Config
    from orchestrator.gateway.lifecycle import Gateway
    from orchestrator.runtime.base import NetworkInfo

    config = Config.model_validate({"settings": {"budget": {"per_root": 5.0}}})
    gateway = Gateway(config, cast(Any, None), cast(NetworkInfo, None),
                      run_budget=lambda info: 1.0, on_budget_refused=lambda info, why: None)

    def root_limit(root_budget: float | None) -> float:
        info = TokenInfo(run_id="r", root_id="pipeline-1", agent="a", depth=0, caller="",
                         root_budget_usd=root_budget)
        return gateway._limits(info).root

    assert root_limit(None) == 5.0
    assert root_limit(0.25) == 0.25
    assert root_limit(9.0) == 5.0


def test_a_request_refused_only_for_others_holds_waits_for_them(store: StateStore) -> None:
    """Runs sharing a root (a tree, a pipeline) must not fail while nothing is spent: a
    request that fits once the holds in flight settle waits for them; one that would not
    fit even then is refused at once."""
    limits = Limits(run=1.0, root=1.0, daily=50.0, day_since=0.0)
    refusals = Refusals()
    gate = LedgerGate(store, limits=lambda info: limits, on_refused=refusals, wait_s=5.0)
    ask = Ask(model="m", input_usd=0.6, usd_per_output_token=0.0, max_tokens=10)
    first = gate.reserve(INFO, ask)
    assert isinstance(first, Hold)
    threading.Timer(0.5, gate.release, args=(INFO, first)).start()
    started = time.monotonic()
    second = gate.reserve(INFO, ask)
    assert isinstance(second, Hold), second
    assert 0.4 < time.monotonic() - started < 4.0
    gate.release(INFO, second)

    too_big = Ask(model="m", input_usd=1.5, usd_per_output_token=0.0, max_tokens=10)
    started = time.monotonic()
    assert isinstance(gate.reserve(INFO, too_big), str)
    assert time.monotonic() - started < 1.0
    assert not refusals.reasons[:-1]
