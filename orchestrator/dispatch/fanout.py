"""Several runs for one tool call: parallel fan-out with an optional aggregator, and dialogue.

Every run of one call shares a root id, so ``budget.per_root`` holds for the whole call.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from orchestrator.config import Config
from orchestrator.dispatch.api import DialogueResult, DialogueTurn, ParallelResult
from orchestrator.errors import AdSandboxError, UsageError
from orchestrator.models import RunRequest, new_id
from orchestrator.results import DispatchResult, ProgressFn
from orchestrator.run.prepared import Prepared

MAX_PARALLEL = 50
MAX_ROUNDS = 10
RESOLVED = "[RESOLVED]"


class Dispatches(Protocol):
    """What fan-out needs of :class:`orchestrator.dispatch.dispatcher.Dispatcher`."""

    @property
    def config(self) -> Config: ...

    def check(self, request: RunRequest) -> Prepared: ...

    async def dispatch(self, request: RunRequest, *, prepared: Prepared | None = None,
                       progress: ProgressFn | None = None,
                       cancel_on_abandon: bool = True) -> DispatchResult: ...


async def parallel(dispatcher: Dispatches, requests: list[RunRequest], *,
                   aggregate: str | None, progress: ProgressFn | None,
                   cancel_on_abandon: bool) -> ParallelResult:
    """Validate all first (nothing runs if one is bad); results in input order."""
    if not requests:
        raise UsageError("dispatch_parallel needs at least one dispatch")
    if len(requests) > MAX_PARALLEL:
        raise UsageError(f"{len(requests)} dispatches; at most {MAX_PARALLEL} per call",
                         hint="Split the work into several calls.")
    checked: list[Prepared] = []
    for index, request in enumerate(requests):
        try:
            checked.append(dispatcher.check(request))
        except AdSandboxError as exc:
            raise type(exc)(f"dispatches[{index}] ({request.agent}): {exc.message}",
                            hint=f"Nothing was run. {exc.hint}") from exc
    if aggregate is not None:
        dispatcher.config.agent(aggregate)
    # A nested call's requests already share their caller's root (and its budget).
    root = requests[0].root_run_id or new_id()
    rooted = [r.model_copy(update={"root_run_id": root}) for r in requests]
    results: list[DispatchResult | None] = [None] * len(rooted)

    async def one(index: int) -> None:
        results[index] = await dispatcher.dispatch(rooted[index], prepared=checked[index],
                                                   progress=progress,
                                                   cancel_on_abandon=cancel_on_abandon)

    async with anyio.create_task_group() as tg:
        for index in range(len(rooted)):
            tg.start_soon(one, index)
    done = [r for r in results if r is not None]
    combined = None
    if aggregate is not None:
        combined = await dispatcher.dispatch(
            RunRequest(
                agent=aggregate, caller="dispatch_parallel", root_run_id=root,
                parent_run_id=requests[0].parent_run_id, depth=requests[0].depth,
                task=f"Combine the {len(done)} results below into one answer.",
                context="\n\n".join(
                    f"### Result {n} (agent {r.agent}, "
                    f"{'ok' if r.success else 'failed: ' + str(r.error)})\n{r.result}"
                    for n, r in enumerate(done, 1)),
            ),
            progress=progress, cancel_on_abandon=cancel_on_abandon)
    return ParallelResult(results=done, aggregate=combined)


def is_resolved(text: str) -> bool:
    """The message's last non-empty line is exactly ``[RESOLVED]`` (not a mention of it)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and lines[-1] == RESOLVED


async def dialogue(dispatcher: Dispatches, requester: str, responder: str, topic: str, *,
                   max_rounds: int, caller: str, progress: ProgressFn | None,
                   cancel_on_abandon: bool) -> DialogueResult:
    """Alternate requester and responder until a message ends with ``[RESOLVED]``."""
    if not topic.strip():
        raise UsageError("the dialogue topic is empty")
    if not 1 <= max_rounds <= MAX_ROUNDS:
        raise UsageError(f"max_rounds must be 1..{MAX_ROUNDS}, got {max_rounds}")
    if requester == responder:
        raise UsageError("requester and responder must be different agents")
    for name in (requester, responder):
        dispatcher.check(RunRequest(agent=name, task=topic))
    root = new_id()
    turns: list[DialogueTurn] = []
    cost = 0.0
    for _ in range(max_rounds):
        for speaker, other in ((requester, responder), (responder, requester)):
            result = await dispatcher.dispatch(
                RunRequest(agent=speaker, task=_turn_task(topic, speaker, other, turns),
                           caller=caller or "dispatch_dialogue", root_run_id=root),
                progress=progress, cancel_on_abandon=cancel_on_abandon)
            cost += result.cost_usd
            text = result.result if result.success else f"(failed: {result.error})"
            turns.append(DialogueTurn(speaker=speaker, text=text))
            if not result.success or is_resolved(text):
                return DialogueResult(rounds=turns, resolved=is_resolved(text), cost_usd=cost)
    return DialogueResult(rounds=turns, resolved=False, cost_usd=cost)


def _turn_task(topic: str, speaker: str, other: str, turns: list[DialogueTurn]) -> str:
    transcript = "\n\n".join(f"**{t.speaker}:**\n{t.text}" for t in turns)
    return (
        f"You ({speaker}) are in a dialogue with the agent {other!r}.\n\n"
        f"## Topic\n{topic}\n\n"
        + (f"## Conversation so far\n{transcript}\n\n" if transcript else "")
        + f"Write your next message to {other}. When the topic is settled, end your message "
        f"with a last line that is exactly {RESOLVED}."
    )
