"""The dispatch service as the MCP layer sees it: a Protocol plus the models it speaks.

``orchestrator.dispatch.service`` implements :class:`DispatchService`; ``orchestrator.server``
adapts it to MCP tools; tests drive the real service over the fake runtime
(``tests/servicekit.py``).
Bad input is reported by raising :class:`orchestrator.errors.AdSandboxError`
subclasses; a run that went wrong is a normal :class:`DispatchResult` with
``success=False``.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.config import Mount, PermissionMode
from orchestrator.models import ExitReason, RunRecord, RunRequest, RunStatus
from orchestrator.results import DispatchResult, ProgressFn

ResponseFormat = Literal["text", "json"]


class DispatchArgs(BaseModel):
    """One entry of ``dispatch_parallel``: the arguments of ``dispatch`` that shape a run."""

    model_config = ConfigDict(extra="forbid")

    agent: str
    task: str
    context: str = ""
    caller: str = ""
    goal: str = ""
    response_format: ResponseFormat = "text"
    timeout_seconds: float | None = Field(default=None, gt=0)
    group: str | None = None

    def to_request(self) -> RunRequest:
        return RunRequest(
            agent=self.agent,
            task=self.task,
            context=self.context,
            caller=self.caller,
            goal=self.goal,
            response_format=self.response_format,
            timeout=self.timeout_seconds,
            group=self.group,
        )


class AgentArgs(BaseModel):
    """Fields of an agent that MCP may set; ``None`` leaves a field as it is (or default)."""

    model_config = ConfigDict(extra="forbid")

    directory: str | None = None
    description: str | None = None
    model: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_budget_usd: float | None = Field(default=None, ge=0)
    permission_mode: PermissionMode | None = None
    allowed_tools: list[str] | None = None
    disallowed_tools: list[str] | None = None
    instructions: str | None = None
    mount: Mount | None = None

    def changes(self) -> dict[str, Any]:
        """Only the fields the caller set."""
        return self.model_dump(exclude_none=True)


class AgentInfo(BaseModel):
    name: str
    description: str = ""
    directory: str
    model: str | None = None
    timeout: float | None = None
    healthy: bool = True
    """The directory exists and the agent's image is present."""
    problem: str | None = None


class AgentDetail(AgentInfo):
    preview: str = ""
    """The first lines of the agent's CLAUDE.md or README."""
    stacks: list[str] = Field(default_factory=list)
    runs: int = 0
    typical_duration_ms: int | None = None
    typical_cost_usd: float | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    """The agent's configuration, secrets shown by source only."""


class GroupMemberInfo(BaseModel):
    agent: str
    use_for: str = ""


class GroupInfo(BaseModel):
    name: str
    description: str = ""
    members: list[str] = Field(default_factory=list)


class GroupDetail(BaseModel):
    name: str
    description: str = ""
    shared_context: str = ""
    members: list[GroupMemberInfo] = Field(default_factory=list)


class JobStatus(BaseModel):
    """An async job (== a run) as ``dispatch_status``/``dispatch_wait`` report it."""

    job_id: str
    agent: str
    status: RunStatus
    exit_reason: ExitReason | None = None
    result: DispatchResult | None = None
    """Set once the run finished."""
    last_action: str = ""
    elapsed_s: float = 0.0

    @classmethod
    def from_record(cls, record: RunRecord, *, now: float | None = None) -> JobStatus:
        now = time.time() if now is None else now
        finished = record.status == "finished"
        end = record.finished_at if finished and record.finished_at else now
        return cls(
            job_id=record.run_id,
            agent=record.agent,
            status=record.status,
            exit_reason=record.exit_reason,
            result=DispatchResult.from_record(record, cached=record.cached) if finished else None,
            last_action=record.last_action,
            elapsed_s=round(max(0.0, end - (record.started_at or record.created_at)), 3),
        )


class ParallelResult(BaseModel):
    results: list[DispatchResult]
    """One per request, in input order."""
    aggregate: DispatchResult | None = None


class DialogueTurn(BaseModel):
    speaker: str
    text: str


class DialogueResult(BaseModel):
    rounds: list[DialogueTurn] = Field(default_factory=list)
    resolved: bool = False
    """A message ended with ``[RESOLVED]``."""
    cost_usd: float = 0.0


class PoolInfo(BaseModel):
    agent: str
    warm: int = 0
    target: int = 0


class ContainerInfo(BaseModel):
    run_id: str
    agent: str
    container_id: str | None = None
    elapsed_s: float = 0.0


class BudgetLeft(BaseModel):
    """USD left at each level; ``per_run`` and ``per_root`` are the configured caps."""

    per_run: float
    per_root: float
    daily: float


class SandboxStatus(BaseModel):
    docker: bool
    """The Docker engine answered."""
    max_concurrency: int
    pool: list[PoolInfo] = Field(default_factory=list)
    running: list[ContainerInfo] = Field(default_factory=list)
    budget: BudgetLeft


class JobStarted(BaseModel):
    job_id: str
    agent: str


class JobList(BaseModel):
    jobs: list[JobStatus]


class AgentList(BaseModel):
    agents: list[AgentInfo]


class GroupList(BaseModel):
    groups: list[GroupInfo]


class FetchedResult(BaseModel):
    ref: str
    text: str


class Count(BaseModel):
    """How many items a clean-up removed."""

    removed: int


class AgentRemoved(BaseModel):
    name: str
    removed: bool = True


class DispatchService(Protocol):
    """What the MCP server needs from the dispatcher.

    Cancelling the task that awaits ``dispatch``/``dispatch_parallel``/``dialogue``
    (MCP ``notifications/cancelled``) must stop the runs it started: the server also
    calls :meth:`cancel` for every run id it saw in progress updates.
    """

    def management_tools_enabled(self) -> bool: ...

    async def dispatch(
        self,
        req: RunRequest,
        *,
        progress: ProgressFn | None = None,
        return_ref: bool = False,
        summary_chars: int = 0,
    ) -> DispatchResult: ...

    async def dispatch_parallel(
        self, reqs: list[RunRequest], *, aggregate: str | None, progress: ProgressFn | None
    ) -> ParallelResult:
        """Validate every request before any runs (all-or-nothing); results in input order."""
        ...

    async def dialogue(
        self,
        requester: str,
        responder: str,
        topic: str,
        *,
        max_rounds: int,
        caller: str,
        progress: ProgressFn | None,
    ) -> DialogueResult: ...

    async def start_async(self, req: RunRequest) -> str:
        """Start a run in the background; the job id is the run id."""
        ...

    async def status(self, job_id: str) -> JobStatus: ...

    async def wait(self, job_id: str, timeout_s: float) -> JobStatus:
        """Return when the job finishes, or at the deadline with its current status."""
        ...

    async def cancel(self, job_id: str) -> JobStatus: ...

    async def jobs(
        self, *, status: str | None, limit: int, agent: str | None
    ) -> list[JobStatus]: ...

    async def fetch_result(self, ref: str, max_chars: int | None) -> str: ...

    async def gc(self) -> int:
        """Remove finished records and stored results past retention; the count removed."""
        ...

    async def list_agents(self) -> list[AgentInfo]: ...

    async def inspect_agent(self, name: str, preview_lines: int) -> AgentDetail: ...

    async def list_groups(self) -> list[GroupInfo]: ...

    async def inspect_group(self, name: str) -> GroupDetail: ...

    async def add_agent(self, name: str, args: AgentArgs) -> AgentInfo: ...

    async def update_agent(self, name: str, args: AgentArgs) -> AgentInfo: ...

    async def remove_agent(self, name: str) -> None: ...

    async def cache_stats(self) -> dict[str, Any]: ...

    async def cache_clear(self) -> int: ...

    async def sandbox_status(self) -> SandboxStatus: ...
