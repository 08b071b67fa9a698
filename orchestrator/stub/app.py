"""The stub model as an ASGI app: ``POST /v1/messages`` in JSON or SSE, plus readiness.

Every request is recorded (method, path, query, headers, JSON body) in
``app.state.received`` so tests can assert on what a client really sent.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestrator.stub import wire
from orchestrator.stub.directives import BadRequest, Plan, plan

RECEIVED_LIMIT = 1000


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(wire.error_body(status, message), status_code=status, headers=headers)


async def _record(request: Request) -> dict[str, Any]:
    """Parse the JSON body and keep a copy of the request for tests."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        body = None
    request.app.state.received.append({
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "headers": dict(request.headers),
        "body": body,
    })
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def messages(request: Request) -> Response:
    try:
        body = await _record(request)
        answer = plan(body)
    except BadRequest as exc:
        return _error(400, str(exc))
    headers = {"request-id": f"req_stub_{wire.request_digest(body)}"}
    if answer.status is not None:
        await anyio.sleep(answer.sleep_s)
        return _error(answer.status, f"stub: status {answer.status} as asked", headers)
    if body.get("stream") is True:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            _stream(answer, body), media_type="text/event-stream", headers=headers
        )
    await anyio.sleep(answer.sleep_s)
    return JSONResponse(wire.message(answer, body), headers=headers)


async def _stream(answer: Plan, body: dict[str, Any]) -> AsyncIterator[bytes]:
    # message_start goes out before the delay, as a slow model's would.
    yield wire.stream_head(answer, body)
    await anyio.sleep(answer.sleep_s)
    for event in wire.stream_body(answer, body):
        yield event


async def count_tokens(request: Request) -> Response:
    try:
        body = await _record(request)
        answer = plan(body)
    except BadRequest as exc:
        return _error(400, str(exc))
    return JSONResponse({"input_tokens": answer.usage[0]})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "model": wire.DEFAULT_MODEL})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, f"stub: {exc.detail}: {request.method} {request.url.path}")


def create_app() -> Starlette:
    """A fresh stub model app (its own request log)."""
    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/", health, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.received = deque(maxlen=RECEIVED_LIMIT)
    return app
