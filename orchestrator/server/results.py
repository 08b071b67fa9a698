"""Tool answers: results, errors, progress forwarding and cancellation handling."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import pydantic_core
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from orchestrator.dispatch import (
    DispatchService,
    ParallelResult,
)
from orchestrator.errors import AdSandboxError
from orchestrator.results import DispatchResult, ProgressFn, ProgressUpdate

logger = logging.getLogger(__name__)



ServiceFactory = Callable[[], AbstractAsyncContextManager[DispatchService]]
M = TypeVar("M", bound=BaseModel)
CANCEL_GRACE_S = 10.0
"""How long a cancelled tool may spend telling the service to kill its runs."""
MANAGEMENT_TOOLS = ("add_agent", "update_agent", "remove_agent")
SERVICE_OPEN_S = 120.0
"""How long a tool call waits for the service that opens after the MCP handshake."""


class AppState:
    """What the lifespan yields: the one service every tool call uses.

    The service opens in the background, so the handshake is answered first; tools and
    the tool list wait for it (:meth:`wait_open`). A service that failed to open makes every
    tool call an error result carrying that failure.
    """

    def __init__(self) -> None:
        self._settled = anyio.Event()
        self._service: DispatchService | None = None
        self.failure: AdSandboxError | None = None

    def opened(self, service: DispatchService) -> None:
        self._service = service
        self._settled.set()

    def failed(self, exc: AdSandboxError) -> None:
        self.failure = exc
        self._settled.set()

    @property
    def is_open(self) -> bool:
        return self._service is not None

    async def wait_open(self) -> AdSandboxError | None:
        """Wait for the service to open; why it is not there, or None once it is."""
        with anyio.move_on_after(SERVICE_OPEN_S):
            await self._settled.wait()
        if self._service is not None:
            return None
        return self.failure or AdSandboxError(
            f"the dispatch service did not open within {SERVICE_OPEN_S:.0f} s",
            hint="Is the Docker engine answering? `ad-sandbox doctor` checks; the server's "
            "stderr log says where its start stopped.")

    @property
    def service(self) -> DispatchService:
        if self._service is not None:
            return self._service
        if self.failure is not None:
            raise self.failure
        raise AdSandboxError("the dispatch service is not open yet",
                             hint="This is an ad-sandbox bug: tool calls wait for it.")


Ctx = Context[AppState, Any]


def _service(ctx: Ctx) -> DispatchService:
    return ctx.request_context.lifespan_context.service


# --- results -----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return pydantic_core.to_jsonable_python(value, fallback=str)


def ok_result(model: BaseModel, *, is_error: bool = False) -> CallToolResult:
    """The model as structured content, and as JSON text for clients that read only text."""
    data = model.model_dump(mode="json")
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=data, is_error=is_error
    )


def error_result(exc: AdSandboxError) -> CallToolResult:
    """An ``isError`` result the calling model can act on: message, error_type, hint.

    Text only: strict clients check structured content against the tool's outputSchema
    even on errors, and an error has the shape of no tool's output.
    """
    data: dict[str, Any] = {
        "success": False,
        "error": exc.message,
        "error_type": exc.error_type,
        "hint": exc.hint,
    }
    if exc.data:
        data["details"] = _jsonable(exc.data)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False))],
        is_error=True,
    )


def refused_run(agent: str, exc: AdSandboxError) -> DispatchResult:
    """A refused dispatch as a failed run, so it keeps dispatch's outputSchema."""
    return DispatchResult(
        agent=agent,
        success=False,
        error=exc.message,
        error_type=exc.error_type,
        hint=exc.hint,
        budget_exceeded=exc.error_type == "budget",
    )


def _crash(exc: Exception) -> AdSandboxError:
    # A bug, not bad input: keep serving, tell the caller where the traceback is.
    logger.exception("tool call crashed")
    return AdSandboxError(
        f"internal error: {type(exc).__name__}: {exc}",
        hint="This is an ad-sandbox bug; the server's stderr log has the traceback.",
    )


async def _answer(
    work: Awaitable[M],
    failed: Callable[[M], bool] = lambda _: False,
    as_result: Callable[[AdSandboxError], BaseModel] | None = None,
) -> CallToolResult:
    """Await the service; its refusals and crashes become ``isError`` results."""
    try:
        model = await work
    except Exception as exc:
        error = exc if isinstance(exc, AdSandboxError) else _crash(exc)
        logger.info("tool call refused: %s (%s)", error.message, error.error_type)
        if as_result is not None:
            return ok_result(as_result(error), is_error=True)
        return error_result(error)
    return ok_result(model, is_error=failed(model))


@dataclass
class _Progress:
    """Forwards ProgressUpdates as MCP progress and remembers which runs are live."""

    ctx: Ctx
    count: int = 0
    live: set[str] = field(default_factory=set)

    async def __call__(self, update: ProgressUpdate) -> None:
        if update.state == "finished":
            self.live.discard(update.run_id)
        else:
            self.live.add(update.run_id)
        self.count += 1
        try:
            await self.ctx.report_progress(self.count, None, update.message())
        except Exception:
            # The client went away; the run goes on and its record survives.
            logger.debug("progress not delivered", exc_info=True)


async def _long(
    ctx: Ctx,
    call: Callable[[ProgressFn], Awaitable[M]],
    failed: Callable[[M], bool],
    as_result: Callable[[AdSandboxError], BaseModel] | None = None,
) -> CallToolResult:
    """Run a long tool with progress; on MCP cancellation make sure its runs are killed."""
    progress = _Progress(ctx)
    try:
        return await _answer(call(progress), failed, as_result)
    except anyio.get_cancelled_exc_class():
        if not _cancel_requested(ctx):
            # Not the client's cancel but its going away (or shutdown): the runs go on in the
            # service and stay readable through dispatch_status / fetch_result and the CLI.
            logger.info("caller gone; runs %s continue", sorted(progress.live))
            raise
        with anyio.move_on_after(CANCEL_GRACE_S, shield=True):
            for run_id in sorted(progress.live):
                try:
                    await _service(ctx).cancel(run_id)
                except Exception as exc:  # already gone is fine; the cancel must still propagate
                    logger.debug("cancel %s after MCP cancellation: %s", run_id, exc)
        raise


def _cancel_requested(ctx: Ctx) -> bool:
    """Whether the client sent ``notifications/cancelled`` for this request.

    The SDK sets an event on the request's dispatch context before it cancels the handler;
    the tool Context does not expose it, the per-request session holds it. When it cannot be
    read, a cancellation counts as the client's (killing the runs is the safe side). The
    e2e tests pin both behaviours: a cancel kills, a disconnect does not.
    """
    try:
        dispatch_context = ctx.request_context.session._request_outbound
        event = dispatch_context.cancel_requested
    except (AttributeError, ValueError):
        return True
    return bool(event.is_set())


def _run_failed(result: DispatchResult) -> bool:
    return not result.success


def _parallel_failed(result: ParallelResult) -> bool:
    # Partial failures are still a useful answer; each entry carries its own success.
    if result.aggregate is not None and not result.aggregate.success:
        return True
    return not any(r.success for r in result.results)


