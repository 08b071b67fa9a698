"""What the dispatcher hands back to the CLI and MCP layers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.models import ErrorType, ExitReason, Outcome, RunRecord


class DispatchResult(BaseModel):
    """agent-dispatch's result fields plus the sandbox's own (SPEC §6)."""

    agent: str
    success: bool
    result: str = ""
    session_id: str | None = None
    cost_usd: float = 0.0
    duration_ms: int = 0
    num_turns: int = 0
    error: str | None = None
    error_type: ErrorType | None = None
    parsed_result: Any = None
    denied_tools: list[str] = Field(default_factory=list)
    hint: str | None = None
    budget_exceeded: bool = False
    outcome: Outcome | None = None
    cached: bool = False
    run_id: str = ""
    exit_reason: ExitReason | None = None
    container_id: str | None = None
    image: str | None = None
    ref: str | None = None
    """Set when the full result is stored by reference (``return_ref``): see fetch_result."""
    parent_run_id: str | None = None
    """The run that dispatched this one (nested dispatch through the gateway's ``/mcp``)."""
    depth: int = 0
    denied_hosts: list[str] = Field(default_factory=list)
    """Hosts the egress proxy refused during the run."""

    @classmethod
    def from_record(cls, record: RunRecord, *, cached: bool = False) -> DispatchResult:
        return cls(
            agent=record.agent,
            success=record.success,
            result=record.result,
            session_id=record.session_id,
            cost_usd=0.0 if cached else max(record.cost_usd, record.claude_cost_usd),
            duration_ms=record.duration_ms,
            num_turns=record.num_turns,
            error=record.error,
            error_type=record.error_type,
            parsed_result=record.parsed_result,
            denied_tools=list(record.denied_tools),
            hint=record.hint,
            budget_exceeded=record.exit_reason == "budget",
            outcome=record.outcome,
            cached=cached,
            run_id=record.run_id,
            exit_reason=record.exit_reason,
            container_id=record.container_id,
            image=record.image,
            parent_run_id=record.parent_id,
            depth=record.depth,
            denied_hosts=sorted(record.egress.denied) if record.egress else [],
        )


class ProgressUpdate(BaseModel):
    """A heartbeat of a running dispatch, sent at least every 10 s."""

    run_id: str
    agent: str
    elapsed_s: float
    state: str
    """queued | starting | running | finished"""
    last_action: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    queue_position: int | None = None

    def message(self) -> str:
        if self.state == "queued":
            return f"{self.agent}: queued (position {self.queue_position})"
        tokens = f"{self.input_tokens}+{self.output_tokens} tok, ${self.cost_usd:.4f}"
        action = f" — {self.last_action}" if self.last_action else ""
        return f"{self.agent}: {self.state} {self.elapsed_s:.0f}s, {tokens}{action}"


ProgressFn = Callable[[ProgressUpdate], Awaitable[None]]
