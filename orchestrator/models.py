"""Data that crosses module boundaries: requests, parsed claude output, run records."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.outcomes import ErrorType, ExitReason

__all__ = ["ClaudeResult", "ErrorType", "ExitReason", "Outcome", "RunRecord", "RunRequest",
           "RunStatus", "new_id"]

RunStatus = Literal["queued", "running", "finished"]
Outcome = Literal["done", "partial", "blocked"]


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class RunRequest(BaseModel):
    """One task for one agent, as the dispatcher receives it."""

    model_config = ConfigDict(frozen=True)

    agent: str
    task: str
    context: str = ""
    goal: str = ""
    caller: str = ""
    response_format: Literal["text", "json"] = "text"
    timeout: float | None = None
    session_id: str | None = None
    """Resume this session (``--resume``) instead of starting a new one."""
    group: str | None = None
    """A group whose shared_context joins the prompt's context."""
    parent_run_id: str | None = None
    root_run_id: str | None = None
    depth: int = 0
    max_budget_usd: float | None = Field(default=None, ge=0)
    """A cap below ``settings.budget.per_run`` and the agent's own (a pipeline's share of
    its ``--budget``): the gateway and claude's ``--max-budget-usd`` both get the lowest."""
    root_budget_usd: float | None = Field(default=None, ge=0)
    """A cap below ``settings.budget.per_root`` for everything under ``root_run_id`` (a
    pipeline's ``--budget``): the gateway holds every request of the tree against it
    atomically, so runs started together cannot pass it between them."""


class ClaudeResult(BaseModel):
    """What one ``claude -p`` invocation reported, parsed from json or stream-json."""

    is_error: bool
    subtype: str = ""
    result: str = ""
    session_id: str | None = None
    num_turns: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    denied_tools: list[str] = Field(default_factory=list)
    terminal_reason: str | None = None
    api_error_status: int | None = None
    errors: list[str] = Field(default_factory=list)
    duration_ms: int = 0


class EgressLog(BaseModel):
    """What the egress proxy decided for one run: host name → requests."""

    mode: str = ""
    allowed: dict[str, int] = Field(default_factory=dict)
    denied: dict[str, int] = Field(default_factory=dict)
    complete: bool = True
    """False when the proxy was lost during the run, and with it what it decided."""


class RunRecord(BaseModel):
    """The durable record of one run (SPEC §6); the single source of every result."""

    run_id: str = Field(default_factory=new_id)
    root_id: str = ""
    parent_id: str | None = None
    agent: str
    caller: str = ""
    depth: int = 0
    status: RunStatus = "queued"
    exit_reason: ExitReason | None = None
    success: bool = False
    outcome: Outcome | None = None
    task: str = ""
    result: str = ""
    error: str | None = None
    error_type: ErrorType | None = None
    hint: str | None = None
    session_id: str | None = None
    container_id: str | None = None
    image: str | None = None
    image_digest: str | None = None
    cost_usd: float = 0.0
    """Gateway-metered cost."""
    claude_cost_usd: float = 0.0
    """Cost the claude CLI reported."""
    input_tokens: int = 0
    output_tokens: int = 0
    num_turns: int = 0
    denied_tools: list[str] = Field(default_factory=list)
    egress: EgressLog | None = None
    """The proxy's decisions for this run (``network.egress`` other than ``none``)."""
    cached: bool = False
    parsed_result: Any = None
    owner_pid: int | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: int = 0
    last_action: str = ""
    cancel_requested: bool = False
    """Set by a process that wants the run cancelled but does not own it."""
    response_format: Literal["text", "json"] = "text"
    timeout_s: float | None = None
    gateway_url: str | None = None
    """The gateway address its claude talks to; a process adopting the run serves it again."""
    token_digest: str | None = None
    """sha256 of the run token (never the token): lets an adopting process honour it."""
    adoptable: bool = False
    """Started by the MCP service (its answer is fetched later), so a restart re-attaches it;
    a CLI run's answer went to a terminal that is gone, so it is reaped instead."""

    def model_post_init(self, __context: Any) -> None:
        if not self.root_id:
            self.root_id = self.run_id
