"""Nested dispatch (SPEC §5 ``/mcp``): what an agent in its container may ask of the service.

The gateway's ``/mcp`` route calls :class:`AgentCalls` from the gateway's own thread and
event loop; every call is handed to the loop the dispatcher lives in. Who is asking (agent,
run, root, depth, budget cap) is read from the run token alone, never from the arguments:
a child is its caller's depth + 1 under the caller's root, limited to the caller's
``dispatch_to`` and to ``settings.max_dispatch_depth``.

A nested run takes no concurrency slot of its own: it borrows its root's (the root waits on
it), so a tree deeper than ``max_concurrency`` cannot deadlock the machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from orchestrator.claude.invoke import NESTED_TOOLS
from orchestrator.config import Config
from orchestrator.dispatch import catalog, fanout
from orchestrator.dispatch.api import AgentInfo, DispatchArgs, ParallelResult
from orchestrator.errors import AgentNotFound, RecursionLimit, UsageError
from orchestrator.gateway.tokens import RunTokens, TokenInfo
from orchestrator.models import RunRequest
from orchestrator.results import DispatchResult
from orchestrator.state import StateStore

T = TypeVar("T")

SESSION_SEARCH = 500
"""How many of the target's latest runs a resumed session is looked up in."""


Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]
AgentMcpFactory = Callable[["AgentCalls"], tuple[Sequence[BaseRoute], Lifespan]]
"""Builds the gateway's ``/mcp`` routes (and their lifespan) over :class:`AgentCalls`; the
faces pass one (``orchestrator.server.agentmcp``): this layer does not speak MCP."""


def may_dispatch(config: Config, caller: str) -> list[str]:
    """The agents ``caller`` may dispatch to, as the config is now (``*``: every other)."""
    agent = config.agents.get(caller)
    if agent is None:
        return []
    if "*" in agent.dispatch_to:
        return sorted(name for name in config.agents if name != caller)
    return sorted(name for name in agent.dispatch_to if name in config.agents)


def child_request(config: Config, caller: TokenInfo, args: DispatchArgs, *,
                  session_id: str | None = None) -> RunRequest:
    """The request of a child of ``caller``'s run; refused when the target is not in the
    caller's ``dispatch_to`` or the child would be deeper than the limit."""
    allowed = may_dispatch(config, caller.agent)
    if args.agent not in allowed:
        raise AgentNotFound(
            f"agent {caller.agent!r} may not dispatch to {args.agent!r}: it is not in "
            f"agents.{caller.agent}.dispatch_to (allowed: {', '.join(allowed) or 'none'})",
            hint="Call list_agents for the agents you may dispatch to.",
        )
    depth = caller.depth + 1
    limit = config.settings.max_dispatch_depth
    if depth > limit:
        raise RecursionLimit(
            f"dispatch depth {depth} exceeds settings.max_dispatch_depth = {limit} "
            f"(run {caller.run_id} of {caller.agent!r} is at depth {caller.depth})",
            hint="Do the work yourself instead of dispatching it further.",
        )
    return args.to_request().model_copy(update={
        "caller": f"{caller.agent} (run {caller.run_id})",
        "parent_run_id": caller.run_id,
        "root_run_id": caller.root_id,
        "depth": depth,
        "root_budget_usd": caller.root_budget_usd,
        "session_id": session_id,
    })


class AgentCalls:
    """The nested-dispatch calls, authenticated by run token; safe from any thread's loop."""

    def __init__(self, tokens: RunTokens, config: Callable[[], Config],
                 dispatcher: fanout.Dispatches, state: StateStore,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._tokens = tokens
        self._state = state
        self._config = config
        self._dispatcher = dispatcher
        self._loop = loop

    def caller(self, token: str) -> TokenInfo | None:
        """The live run ``token`` stands for, or None."""
        return self._tokens.lookup(token)

    def _caller(self, token: str) -> TokenInfo:
        info = self.caller(token)
        if info is None:  # the route checks first; a run that ended meanwhile lands here
            raise UsageError("the run token is not live (its run has ended)")
        return info

    async def dispatch(self, token: str, args: DispatchArgs,
                       session_id: str | None = None) -> DispatchResult:
        caller = self._caller(token)
        req = child_request(self._config(), caller, args, session_id=session_id)

        async def run() -> DispatchResult:
            if session_id is not None:
                self._check_session(caller, args.agent, session_id)
            return await self._dispatcher.dispatch(req, cancel_on_abandon=True)

        return await self._in_service(run)

    def _check_session(self, caller: TokenInfo, agent: str, session_id: str) -> None:
        """A nested run resumes only a session of its own tree: another's conversation is
        not the caller's to read."""
        for record in self._state.list_runs(status=None, agent=agent, limit=SESSION_SEARCH):
            if record.session_id == session_id and record.root_id == caller.root_id:
                return
        raise UsageError(
            f"session {session_id!r} is not a session of agent {agent!r} in this run's tree",
            hint="Resume only sessions of runs you dispatched (their session_id).")

    async def dispatch_parallel(self, token: str, args: list[DispatchArgs],
                                aggregate: str | None) -> ParallelResult:
        caller = self._caller(token)
        config = self._config()
        reqs = [child_request(config, caller, one) for one in args]
        if aggregate is not None:  # the aggregator is a child too: same rules
            child_request(config, caller, DispatchArgs(agent=aggregate, task="aggregate"))
        return await self._in_service(lambda: fanout.parallel(
            self._dispatcher, reqs, aggregate=aggregate, progress=None, cancel_on_abandon=True))

    def list_agents(self, token: str) -> list[AgentInfo]:
        caller = self._caller(token)
        config = self._config()
        return [catalog.agent_info(config, name) for name in may_dispatch(config, caller.agent)]

    async def _in_service(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` in the service's loop; cancelling the caller cancels it there (the
        child's run is killed: its parent no longer waits)."""
        async def call() -> T:
            return await work()

        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            return await call()
        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return await asyncio.wrap_future(future)


__all__ = ["NESTED_TOOLS", "AgentCalls", "AgentMcpFactory", "child_request", "may_dispatch"]
