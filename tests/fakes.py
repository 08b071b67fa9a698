"""A FakeDispatcher implementing orchestrator.dispatch.api.DispatchService, for server tests.

Tasks steer it: ``fail`` ends in a failed run, ``block`` runs until cancelled (sending
one progress update first), ``boom`` raises a plain exception (a bug); anything else
succeeds at once with the task echoed back after two progress updates. Input is
checked the way the real dispatcher must: unknown agents, empty tasks and huge
contexts are refused with AdSandboxError subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from orchestrator.dispatch.api import (
    AgentArgs,
    AgentDetail,
    AgentInfo,
    BudgetLeft,
    DialogueResult,
    DialogueTurn,
    GroupDetail,
    GroupInfo,
    GroupMemberInfo,
    JobStatus,
    ParallelResult,
    PoolInfo,
    SandboxStatus,
)
from orchestrator.errors import AgentNotFound, RunNotFound, UsageError
from orchestrator.models import RunRequest, new_id
from orchestrator.results import DispatchResult, ProgressFn, ProgressUpdate

MAX_CONTEXT = 256 * 1024


@dataclass
class _Job:
    status: JobStatus
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None


class FakeDispatcher:
    """In-memory stand-in for the dispatcher; records what it was asked."""

    def __init__(self, *, management_tools: bool = False) -> None:
        self.management = management_tools
        self.agents: dict[str, AgentInfo] = {
            name: AgentInfo(name=name, description=f"{name} agent", directory=f"/projects/{name}")
            for name in ("alpha", "beta")
        }
        self.requests: list[RunRequest] = []
        self.cancelled: list[str] = []
        """Run ids whose dispatch saw its awaiting task cancelled."""
        self.cancel_calls: list[str] = []
        self.cancel_called = anyio.Event()
        self.blocked = anyio.Event()
        """Set when a ``block`` task is running."""
        self.jobs_by_id: dict[str, _Job] = {}
        self.cache: dict[str, str] = {"k1": "v1"}
        self.refs: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    # -- checks the real dispatcher makes too ---------------------------------------

    def _check(self, req: RunRequest) -> None:
        if req.agent not in self.agents:
            raise AgentNotFound(f"no agent named {req.agent!r}", agent=req.agent)
        if not req.task.strip():
            raise UsageError("the task is empty", hint="Say what the agent should do.")
        if len(req.context) > MAX_CONTEXT:
            raise UsageError(
                f"the context is {len(req.context)} characters; the limit is {MAX_CONTEXT}",
                hint="Pass file paths instead of file contents.",
            )

    # -- runs -----------------------------------------------------------------------

    async def _run(
        self, req: RunRequest, run_id: str, progress: ProgressFn | None
    ) -> DispatchResult:
        self.requests.append(req)

        async def tell(state: str, action: str = "") -> None:
            if progress is not None:
                await progress(ProgressUpdate(
                    run_id=run_id, agent=req.agent, elapsed_s=0.0, state=state,
                    last_action=action, input_tokens=10, output_tokens=5, cost_usd=0.001,
                ))

        await tell("starting")
        if req.task == "block":
            await tell("running", "Bash(sleep)")
            try:
                self.blocked.set()
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(run_id)
                raise
        if req.task == "boom":
            raise RuntimeError("fake bug")
        await tell("running", "Read(README.md)")
        await tell("finished")
        if req.task == "fail":
            return DispatchResult(
                agent=req.agent, success=False, run_id=run_id, error="agent crashed",
                error_type="cli_error", hint="Read the result text.", exit_reason="crashed",
            )
        return DispatchResult(
            agent=req.agent, success=True, result=f"done: {req.task}", run_id=run_id,
            session_id=req.session_id or f"s-{run_id}", outcome="done", exit_reason="completed",
            parsed_result={"task": req.task} if req.response_format == "json" else None,
        )

    def management_tools_enabled(self) -> bool:
        return self.management

    async def dispatch(
        self,
        req: RunRequest,
        *,
        progress: ProgressFn | None = None,
        return_ref: bool = False,
        summary_chars: int = 0,
    ) -> DispatchResult:
        self._check(req)
        result = await self._run(req, new_id(), progress)
        if return_ref:
            ref = f"ref-{result.run_id}"
            self.refs[ref] = result.result
            result = result.model_copy(update={"ref": ref, "result": result.result[:summary_chars]})
        return result

    async def dispatch_parallel(
        self, reqs: list[RunRequest], *, aggregate: str | None, progress: ProgressFn | None
    ) -> ParallelResult:
        for req in reqs:  # all-or-nothing, before anything runs
            self._check(req)
        if aggregate is not None and aggregate not in self.agents:
            raise AgentNotFound(f"no agent named {aggregate!r}", agent=aggregate)
        results: list[DispatchResult | None] = [None] * len(reqs)

        async def one(i: int, req: RunRequest) -> None:
            results[i] = await self._run(req, new_id(), progress)

        async with anyio.create_task_group() as tg:
            for i, req in enumerate(reqs):
                tg.start_soon(one, i, req)
        done = [r for r in results if r is not None]
        merged = None
        if aggregate is not None:
            merged = await self._run(
                RunRequest(agent=aggregate, task="merge " + " | ".join(r.result for r in done)),
                new_id(), progress,
            )
        return ParallelResult(results=done, aggregate=merged)

    async def dialogue(
        self,
        requester: str,
        responder: str,
        topic: str,
        *,
        max_rounds: int,
        caller: str,
        progress: ProgressFn | None,
    ) -> DialogueResult:
        for name in (requester, responder):
            if name not in self.agents:
                raise AgentNotFound(f"no agent named {name!r}", agent=name)
        turns = [DialogueTurn(speaker=requester, text=f"about {topic}?")]
        turns.append(DialogueTurn(speaker=responder, text="agreed [RESOLVED]"))
        return DialogueResult(rounds=turns[: max_rounds * 2], resolved=True, cost_usd=0.002)

    # -- jobs -----------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeDispatcher]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def start_async(self, req: RunRequest) -> str:
        self._check(req)
        assert self._tg is not None, "use FakeDispatcher.running()"
        run_id = new_id()
        job = _Job(JobStatus(job_id=run_id, agent=req.agent, status="running"))
        self.jobs_by_id[run_id] = job

        async def work() -> None:
            with anyio.CancelScope() as scope:
                job.scope = scope
                result = await self._run(req, run_id, None)
                job.status = job.status.model_copy(update={
                    "status": "finished", "exit_reason": result.exit_reason, "result": result,
                })
            job.done.set()

        self._tg.start_soon(work)
        return run_id

    def _job(self, job_id: str) -> _Job:
        if job_id not in self.jobs_by_id:
            raise RunNotFound(f"no job {job_id!r}", job_id=job_id)
        return self.jobs_by_id[job_id]

    async def status(self, job_id: str) -> JobStatus:
        return self._job(job_id).status

    async def wait(self, job_id: str, timeout_s: float) -> JobStatus:
        job = self._job(job_id)
        with anyio.move_on_after(timeout_s):
            await job.done.wait()
        return job.status

    async def cancel(self, job_id: str) -> JobStatus:
        self.cancel_calls.append(job_id)
        self.cancel_called.set()
        job = self._job(job_id)
        if job.status.status != "finished":
            if job.scope is not None:
                job.scope.cancel()
            job.status = job.status.model_copy(
                update={"status": "finished", "exit_reason": "cancelled"}
            )
            job.done.set()
        return job.status

    async def jobs(self, *, status: str | None, limit: int, agent: str | None) -> list[JobStatus]:
        found = [
            j.status for j in self.jobs_by_id.values()
            if (status is None or j.status.status == status)
            and (agent is None or j.status.agent == agent)
        ]
        return found[:limit]

    async def fetch_result(self, ref: str, max_chars: int | None) -> str:
        if ref not in self.refs:
            raise RunNotFound(f"no stored result {ref!r}")
        return self.refs[ref][:max_chars]

    async def gc(self) -> int:
        finished = [k for k, j in self.jobs_by_id.items() if j.status.status == "finished"]
        for key in finished:
            del self.jobs_by_id[key]
        return len(finished)

    # -- agents, groups, cache, status ---------------------------------------------

    def _agent(self, name: str) -> AgentInfo:
        if name not in self.agents:
            raise AgentNotFound(f"no agent named {name!r}", agent=name)
        return self.agents[name]

    async def list_agents(self) -> list[AgentInfo]:
        return list(self.agents.values())

    async def inspect_agent(self, name: str, preview_lines: int) -> AgentDetail:
        info = self._agent(name)
        preview = "\n".join(f"line {i}" for i in range(preview_lines))
        return AgentDetail(**info.model_dump(), preview=preview, stacks=["python"], runs=3)

    async def list_groups(self) -> list[GroupInfo]:
        return [GroupInfo(name="team", description="both", members=["alpha", "beta"])]

    async def inspect_group(self, name: str) -> GroupDetail:
        if name != "team":
            raise UsageError(f"no group named {name!r}")
        members = [GroupMemberInfo(agent="alpha", use_for="a"), GroupMemberInfo(agent="beta")]
        return GroupDetail(name="team", shared_context="shared", members=members)

    async def add_agent(self, name: str, args: AgentArgs) -> AgentInfo:
        if name in self.agents:
            raise UsageError(f"agent {name!r} exists", hint="Use update_agent.")
        if not args.directory:
            raise UsageError("directory is required")
        fields: dict[str, Any] = {"description": args.description or "", "model": args.model}
        self.agents[name] = AgentInfo(name=name, directory=args.directory, **fields)
        return self.agents[name]

    async def update_agent(self, name: str, args: AgentArgs) -> AgentInfo:
        info = self._agent(name)
        known = {k: v for k, v in args.changes().items() if k in AgentInfo.model_fields}
        self.agents[name] = info.model_copy(update=known)
        return self.agents[name]

    async def remove_agent(self, name: str) -> None:
        self._agent(name)
        del self.agents[name]

    async def cache_stats(self) -> dict[str, Any]:
        return {"entries": len(self.cache), "hits": 0, "misses": 0}

    async def cache_clear(self) -> int:
        count = len(self.cache)
        self.cache.clear()
        return count

    async def sandbox_status(self) -> SandboxStatus:
        return SandboxStatus(
            docker=True, max_concurrency=4,
            pool=[PoolInfo(agent=name, warm=1, target=1) for name in self.agents],
            budget=BudgetLeft(per_run=1.0, per_root=5.0, daily=49.5),
        )


def fake_factory(fake: FakeDispatcher) -> Any:
    """A service factory for ``create_server`` that serves this fake."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[FakeDispatcher]:
        async with fake.running():
            yield fake

    return factory
