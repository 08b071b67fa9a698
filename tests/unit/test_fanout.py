"""Several runs for one call, on the real Service over the fake runtime: dispatch_parallel
(all-or-nothing checks, input order, per-item failures, the aggregator) and the dialogue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.dispatch.fanout import MAX_PARALLEL, MAX_ROUNDS, is_resolved
from orchestrator.errors import AgentNotFound, UsageError
from orchestrator.models import RunRequest
from tests.servicekit import Kit, open_kit, use_home

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kit]:
    use_home(tmp_path, monkeypatch)
    async with open_kit() as started:
        yield started


def reply(text: str, agent: str = "beta") -> RunRequest:
    return RunRequest(agent=agent, task=f"[[reply: {text}]]")


async def test_parallel_keeps_input_order_and_aggregates(kit: Kit) -> None:
    requests = [reply(f"r{i}", agent=("alpha", "beta")[i % 2]) for i in range(4)]
    result = await kit.service.dispatch_parallel(requests, aggregate="alpha", progress=None)
    assert [r.result for r in result.results] == ["r0", "r1", "r2", "r3"]
    assert [r.agent for r in result.results] == ["alpha", "beta", "alpha", "beta"]
    assert result.aggregate is not None and result.aggregate.agent == "alpha"
    # The aggregator's prompt (echoed by the stub) holds every result, numbered, in order.
    text = result.aggregate.result
    assert "Combine the 4 results" in text
    assert [text.index(f"### Result {n} ") for n in range(1, 5)] == sorted(
        text.index(f"### Result {n} ") for n in range(1, 5))
    roots = {kit.state.get_run(r.run_id).root_id for r in [*result.results, result.aggregate]}
    assert len(roots) == 1  # one root: budget.per_root holds for the whole call


async def test_a_failing_item_is_its_own_result(kit: Kit) -> None:
    requests = [reply("fine"), RunRequest(agent="alpha", task="[[status: 429]]")]
    result = await kit.service.dispatch_parallel(requests, aggregate="beta", progress=None)
    ok, failed = result.results
    assert ok.success and ok.result == "fine"
    assert not failed.success and failed.error_type == "usage_limit"
    assert result.aggregate is not None and result.aggregate.success
    assert "failed: " in result.aggregate.result  # the aggregator is told which failed


@pytest.mark.parametrize(("requests", "aggregate", "error", "match"), [
    ([reply("a"), RunRequest(agent="nobody", task="t")], None, AgentNotFound,
     r"dispatches\[1\] \(nobody\)"),
    ([reply("a"), RunRequest(agent="alpha", task=" ")], None, UsageError, r"dispatches\[1\]"),
    ([reply("a")], "nobody", AgentNotFound, "unknown agent 'nobody'"),
    ([], None, UsageError, "at least one"),
    ([reply("a")] * (MAX_PARALLEL + 1), None, UsageError, f"at most {MAX_PARALLEL}"),
])
async def test_parallel_is_checked_before_anything_runs(
    kit: Kit, requests: list[RunRequest], aggregate: str | None, error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match) as info:
        await kit.service.dispatch_parallel(requests, aggregate=aggregate, progress=None)
    if "dispatches[" in match:
        assert getattr(info.value, "hint", "").startswith("Nothing was run.")
    assert kit.execs() == [] and kit.state.list_runs() == []


async def test_dialogue_ends_when_a_message_ends_resolved(kit: Kit) -> None:
    result = await kit.service.dialogue("alpha", "beta", "[[reply: agreed\n[RESOLVED] ]]",
                                        max_rounds=3, caller="", progress=None)
    assert result.resolved and result.cost_usd > 0
    assert [t.speaker for t in result.rounds] == ["alpha"]
    runs = kit.state.list_runs()
    assert len(runs) == 1 and runs[0].caller == "dispatch_dialogue"


async def test_dialogue_alternates_until_max_rounds(kit: Kit) -> None:
    result = await kit.service.dialogue("alpha", "beta", "what is best?", max_rounds=2,
                                        caller="me", progress=None)
    assert not result.resolved
    assert [t.speaker for t in result.rounds] == ["alpha", "beta", "alpha", "beta"]
    # Each turn's prompt carries the conversation so far (the stub echoes it back).
    assert "**alpha:**" in result.rounds[1].text and "**beta:**" in result.rounds[2].text
    assert {r.caller for r in kit.state.list_runs()} == {"me"}


async def test_dialogue_stops_at_a_failed_turn(kit: Kit) -> None:
    result = await kit.service.dialogue("alpha", "beta", "[[status: 429]]", max_rounds=3,
                                        caller="", progress=None)
    assert not result.resolved and len(result.rounds) == 1
    assert result.rounds[0].text.startswith("(failed: ")


@pytest.mark.parametrize(("requester", "responder", "topic", "rounds", "error", "match"), [
    ("alpha", "beta", "  ", 1, UsageError, "topic is empty"),
    ("alpha", "beta", "x", 0, UsageError, "max_rounds"),
    ("alpha", "beta", "x", MAX_ROUNDS + 1, UsageError, "max_rounds"),
    ("alpha", "alpha", "x", 1, UsageError, "different agents"),
    ("alpha", "nobody", "x", 1, AgentNotFound, "unknown agent"),
])
async def test_dialogue_refusals(kit: Kit, requester: str, responder: str, topic: str,
                                 rounds: int, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        await kit.service.dialogue(requester, responder, topic, max_rounds=rounds, caller="",
                                   progress=None)
    assert kit.execs() == []


@pytest.mark.parametrize(("text", "resolved"), [
    ("done\n[RESOLVED]", True),
    ("done\n  [RESOLVED]  \n\n", True),
    ("we are not [RESOLVED] yet", False),
    ("[RESOLVED]\nbut one more thing", False),
    ("", False),
])
def test_is_resolved_reads_the_last_line(text: str, resolved: bool) -> None:
    assert is_resolved(text) is resolved
