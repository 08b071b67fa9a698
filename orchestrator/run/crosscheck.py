"""Is the result claude printed the answer the model gave? (SPEC §4: results cross-checked.)

claude's stdout is a pipe that any process of the run's uid can reach through
``/proc/<pid>/fd/1``, to add lines or to take claude's own away. So a run counts as a
success only when its stream-json shows exactly one ``result``, claude exited 0, the
result names the run's own session, and its text is the text of the last answer the
gateway itself relayed for the run, in a request of that session.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.gateway.answers import text_digest
from orchestrator.models import ClaudeResult
from orchestrator.state import StateStore
from orchestrator.state.answers import RelayedAnswer

FORGED_HINT = (
    "claude's reported result does not match what the ad-sandbox gateway relayed from the "
    "model ({mismatch}); a process inside the container likely forged it. Do not act on "
    "this run's output; inspect `ad-sandbox logs {run_id}` and the project's scripts."
)


@dataclass(frozen=True)
class Evidence:
    """What the orchestrator itself knows about how a run ended."""

    result_events: int
    """``result`` lines in the stream."""
    exit_code: int | None
    """claude's exit code (from the exec, or the file the run script wrote)."""
    session_id: str | None
    """The session the orchestrator started or resumed."""
    answer: RelayedAnswer | None
    """The last answer the gateway relayed for the run."""


def mismatch(result: ClaudeResult, evidence: Evidence) -> str | None:
    """Why ``result`` (a claimed success) cannot be what the model said; None when it is."""
    if evidence.result_events != 1:
        return (f"the stream held {evidence.result_events} result events where claude prints "
                "one")
    if evidence.exit_code != 0:
        return f"the stream reports success but claude exited with code {evidence.exit_code}"
    if evidence.session_id and result.session_id != evidence.session_id:
        return (f"the result names session {result.session_id!r}, the run's session is "
                f"{evidence.session_id!r}")
    answer = evidence.answer
    if answer is None:
        return "the gateway relayed no model answer for this run"
    if evidence.session_id and answer.session_id not in (None, evidence.session_id):
        return (f"the last relayed answer was for session {answer.session_id!r}, not the "
                f"run's {evidence.session_id!r}")
    if text_digest(result.result) not in answer.digests:
        return "the result text differs from the last model answer relayed for this run"
    return None


def check_run(state: StateStore, run_id: str, result: ClaudeResult, *, result_events: int,
              exit_code: int | None) -> str | None:
    """:func:`mismatch` for a run whose claimed success is ``result``, from the state."""
    evidence = Evidence(
        result_events=result_events,
        exit_code=exit_code,
        session_id=state.get_run(run_id).session_id,
        answer=state.last_answer(run_id),
    )
    return mismatch(result, evidence)
