"""LiveRun: changed only through its methods, each of which wakes the waiters."""

from __future__ import annotations

import threading

import anyio
import pytest

from orchestrator.models import RunRecord
from orchestrator.run.live import LiveRun

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_its_fields_are_read_only() -> None:
    live = LiveRun(RunRecord(agent="a"))
    for name in ("state", "container_id", "cancel_requested", "budget_reason", "abandoned",
                 "queue_position", "last_action", "scope", "record"):
        with pytest.raises(AttributeError):
            setattr(live, name, None)


async def test_each_change_wakes_a_waiter() -> None:
    live = LiveRun(RunRecord(agent="a"))
    changes = [live.starting, lambda: live.running("c1"), lambda: live.queued(2),
               lambda: live.refuse_budget("spent"), live.abandon,
               lambda: live.progressed(last_action="Read", input_tokens=1, output_tokens=2,
                                       cost_usd=0.1)]
    for change in changes:
        async with anyio.create_task_group() as tg:
            woken = anyio.Event()

            async def wait(woken: anyio.Event) -> None:
                await live.wait_change(5)
                woken.set()

            tg.start_soon(wait, woken)
            await anyio.sleep(0)
            change()
            with anyio.fail_after(2):
                await woken.wait()
    assert (live.state, live.container_id, live.queue_position) == ("running", "c1", 2)
    assert (live.budget_reason, live.abandoned, live.last_action) == ("spent", True, "Read")


async def test_cancel_returns_the_container_to_kill() -> None:
    live = LiveRun(RunRecord(agent="a"))
    assert live.request_cancel() is None and live.cancel_requested
    live.running("c1")
    assert live.request_cancel() == "c1"


async def test_cost_never_goes_down_and_a_thread_may_report() -> None:
    live = LiveRun(RunRecord(agent="a"))

    def report(cost: float) -> None:
        live.progressed(last_action="x", input_tokens=1, output_tokens=1, cost_usd=cost)

    worker = threading.Thread(target=report, args=(0.5,))
    worker.start()
    worker.join()
    report(0.2)  # a late, lower figure
    assert live.snapshot().cost_usd == 0.5


async def test_finish_sets_the_record_and_ends_the_wait() -> None:
    live = LiveRun(RunRecord(agent="a"))
    ended = live.record.model_copy(update={"status": "finished"})
    live.finish(ended)
    assert await live.wait_done(1) and live.state == "finished" and live.record is ended
