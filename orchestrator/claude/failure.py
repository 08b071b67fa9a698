"""Why a `claude -p` run failed, as an ``error_type`` and a hint the calling model can act on.

Timeouts, OOM kills and cancellations are decided by the runtime, which sees the container;
this module reads only what claude itself reported (result object, exit code, stderr).
"""

from __future__ import annotations

import re

from orchestrator.models import ClaudeResult, ErrorType

EXIT_SIGKILL = 137
EXIT_SIGTERM = 143
EXIT_NOT_FOUND = 127

_UNKNOWN_SESSION = re.compile(
    r"no conversation found|--resume requires a valid session|session .* not found", re.IGNORECASE
)
_SESSION_IN_USE = re.compile(r"session id .* is already in use", re.IGNORECASE)
_USAGE_LIMIT = re.compile(r"usage limit|rate limit|hit your limit|quota", re.IGNORECASE)
_BUDGET = re.compile(r"budget", re.IGNORECASE)
_RUN_TOKEN = re.compile(r"run token", re.IGNORECASE)
_AUTH = re.compile(r"authenticat|invalid api key|unauthorized|forbidden|oauth", re.IGNORECASE)


def succeeded(result: ClaudeResult | None, exit_code: int | None) -> bool:
    """True for a clean run: a result that is not an error and exit code 0."""
    return result is not None and not result.is_error and exit_code == 0


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _from_stderr(exit_code: int | None, stderr: str) -> tuple[ErrorType, str]:
    said = _last_line(stderr)
    if _UNKNOWN_SESSION.search(stderr):
        return "not_found", (
            f"The session to resume does not exist for this agent ({said}). "
            "Dispatch again without session_id to start a new session."
        )
    if _SESSION_IN_USE.search(stderr):
        return "cli_error", (
            f"{said} Resume it with dispatch_session, or dispatch again without a session id."
        )
    if _USAGE_LIMIT.search(stderr):
        return "usage_limit", f"The model API's usage limit was reached ({said}). Retry later."
    if _AUTH.search(stderr):
        return "permission", (
            f"The model API rejected the credentials ({said}). "
            "Check settings.model_api.credential with `ad-sandbox doctor`."
        )
    if exit_code is None:
        return "sandbox", "claude gave no exit status: the container stopped under it. Retry."
    if exit_code == EXIT_NOT_FOUND:
        return "sandbox", (
            "The claude binary was not found in the agent's image. "
            "Rebuild it with `ad-sandbox image build`."
        )
    if exit_code in (EXIT_SIGKILL, EXIT_SIGTERM):
        return "sandbox", (
            f"claude was killed (exit {exit_code}) before it reported a result. "
            "If the container ran out of memory, raise the agent's resources.memory; "
            "otherwise retry, or resume the session."
        )
    detail = f": {said}" if said else " and printed nothing on stderr"
    return "cli_error", f"claude exited with code {exit_code}{detail}."


def _api_error(result: ClaudeResult) -> tuple[ErrorType, str]:
    status = result.api_error_status
    said = _last_line(result.result) or f"status {status}"
    if status == 402 or _BUDGET.search(result.result):
        # The gateway cuts a run off with a 402 whose message names the spent budget.
        return "budget", (
            f"The gateway stopped the run: {said}. Raise settings.budget or the agent's "
            "max_budget_usd, or wait for the daily budget to free up."
        )
    if status == 429 or _USAGE_LIMIT.search(result.result):
        return "usage_limit", (
            f"The model API refused the request: {said}. Wait a while and retry, "
            "or dispatch fewer runs at once."
        )
    if status in (401, 403) and _RUN_TOKEN.search(result.result):
        return "permission", (
            f"The ad-sandbox gateway refused this run's token: {said}. The run was probably "
            "cancelled or already finished; dispatch it again."
        )
    if status in (401, 403) or _AUTH.search(result.result):
        return "permission", (
            f"The model API rejected the credentials: {said}. "
            "Check settings.model_api.credential with `ad-sandbox doctor`."
        )
    if status is not None and (status >= 500 or status == 529):
        return "cli_error", f"The model API failed: {said}. Retry in a moment."
    return "cli_error", f"The model API returned an error: {said}."


def classify_failure(
    result: ClaudeResult | None, exit_code: int | None, stderr: str
) -> tuple[ErrorType, str]:
    """``(error_type, hint)`` for a run that did not succeed (see :func:`succeeded`)."""
    if result is None:
        return _from_stderr(exit_code, stderr)
    resume = f" Resume session {result.session_id} to continue." if result.session_id else ""
    if result.subtype == "error_max_budget_usd" or result.terminal_reason == "budget_exhausted":
        return "budget", (
            f"The run spent its budget (${result.cost_usd:.4f}). Raise the agent's "
            f"max_budget_usd or narrow the task.{resume}"
        )
    if result.subtype == "error_max_turns" or result.terminal_reason == "max_turns":
        return "cli_error", f"The run hit its turn limit after {result.num_turns} turns.{resume}"
    if result.api_error_status is not None or result.terminal_reason == "api_error":
        return _api_error(result)
    if result.subtype == "error_during_execution":
        said = "; ".join(result.errors) or _last_line(stderr) or "no detail"
        return "cli_error", f"claude stopped during execution ({said}).{resume}"
    if result.is_error:
        said = _last_line(result.result) or "; ".join(result.errors) or _last_line(stderr)
        return "cli_error", f"claude reported an error: {said or 'no detail'}.{resume}"
    if exit_code not in (0, None):
        return "cli_error", f"claude exited with code {exit_code} after reporting success."
    return "cli_error", "claude reported no error; nothing to classify."
