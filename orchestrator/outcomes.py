"""The one table of outcomes: what each way a run can fail means to each face.

A failure has an ``error_type`` (SPEC §6); this table gives each one its CLI exit code
(SPEC §8) and the hint a caller gets when nothing more specific is known. A run that ends
without a result of claude's own has an :data:`ExitReason`, which names its error type here
too. :mod:`orchestrator.errors` takes its exit codes and default hints from this table, the
runner its error types and hints, the CLI its exit codes and the MCP server its
``error_type``; nothing else repeats them::

    error_type   exit  meaning
    ok             0   (no error)
    cli_error      1   claude ran and reported a failure (the task failed)
    cancelled      1   the run was cancelled before it ended
    config         2   the configuration, a secret or the state store cannot be used
    bad_request    2   the request itself is wrong (an argument, a name, a directory)
    not_found      2   no such agent, run, session or reference
    permission     2   not allowed: roots, dispatch_to, credentials, run token
    timeout        3   the run hit its deadline
    budget         3   a money budget ran out (or its spend could not be recorded)
    recursion      3   the dispatch depth limit
    usage_limit    3   the model API's own usage or rate limit
    oom            4   the container ran out of memory
    sandbox        4   Docker, the image, the container or the orchestrator failed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

ExitReason = Literal["completed", "timeout", "oom", "cancelled", "crashed", "budget"]
"""How a run ended, decided from what the orchestrator did and Docker's state."""

ErrorType = Literal[
    "timeout", "budget", "recursion", "not_found", "permission", "usage_limit", "oom",
    "sandbox", "cli_error", "cancelled", "config", "bad_request",
]
"""Why a run or a request failed, as the calling model reads it (SPEC §6)."""

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_LIMIT = 3
EXIT_SANDBOX = 4


@dataclass(frozen=True)
class Failure:
    """One row of the table: the exit code and default hint of an ``error_type``."""

    exit_code: int
    hint: str


FAILURES: Mapping[ErrorType, Failure] = MappingProxyType({
    "cli_error": Failure(EXIT_TASK_FAILED,
                         "Read the result text; resume the session to continue."),
    "cancelled": Failure(EXIT_TASK_FAILED,
                         "The run was cancelled; dispatch again if the task is still needed."),
    "config": Failure(EXIT_USAGE, "Fix the configuration and try again "
                      "(`ad-sandbox doctor` checks it)."),
    "bad_request": Failure(EXIT_USAGE, "See `ad-sandbox --help` or the tool's description."),
    "not_found": Failure(EXIT_USAGE, "Run `ad-sandbox list` (agents) or `ad-sandbox jobs` "
                         "(runs) to see what exists."),
    "permission": Failure(EXIT_USAGE,
                          "Check settings.allowed_roots and the agent's dispatch_to list."),
    "timeout": Failure(EXIT_LIMIT, "Give it a longer timeout (timeout_seconds), or resume the "
                       "session (dispatch_session with this session_id) with a narrower task."),
    "budget": Failure(EXIT_LIMIT, "A money budget ran out, or its spend could not be "
                      "recorded (see the error): raise settings.budget or the agent's "
                      "max_budget_usd, narrow the task, or wait a while."),
    "recursion": Failure(EXIT_LIMIT, "Answer the task yourself instead of dispatching further."),
    "usage_limit": Failure(EXIT_LIMIT, "The model API's usage limit was reached; retry later "
                           "or dispatch fewer runs at once."),
    "oom": Failure(EXIT_SANDBOX, "The agent ran out of memory: raise its resources.memory "
                   "or ask for less."),
    "sandbox": Failure(EXIT_SANDBOX, "See the run's log (`ad-sandbox logs RUN`) and check "
                       "the engine and images with `ad-sandbox doctor`."),
})

REASON_ERRORS: Mapping[ExitReason, ErrorType | None] = MappingProxyType({
    "completed": None,  # claude's own report decides: see orchestrator.claude.failure
    "timeout": "timeout",
    "oom": "oom",
    "cancelled": "cancelled",
    "budget": "budget",
    "crashed": "sandbox",  # the agent process ended without a result
})
"""The error type of a run that ended this way; None: ask what claude reported."""

EXIT_REASONS: tuple[ExitReason, ...] = get_args(ExitReason)
ERROR_TYPES: tuple[ErrorType, ...] = get_args(ErrorType)


def reason_error(reason: ExitReason) -> tuple[ErrorType, str]:
    """``(error_type, hint)`` of a run that ended by ``reason`` without a result of its own."""
    error_type = REASON_ERRORS[reason]
    if error_type is None:
        raise ValueError(f"a {reason} run is classified by what claude reported")
    return error_type, FAILURES[error_type].hint


def exit_code(success: bool, error_type: ErrorType | None,
              exit_reason: ExitReason | None = None) -> int:
    """The CLI exit status of a result (SPEC §8).

    A failure with no error type is read by its exit reason; with neither, its task failed.
    """
    if success:
        return EXIT_OK
    if error_type is None and exit_reason is not None:
        error_type = REASON_ERRORS[exit_reason]
    return EXIT_TASK_FAILED if error_type is None else FAILURES[error_type].exit_code
