"""The model relay: ``POST /v1/messages`` from a container, on to the real model API.

It checks the run token, asks whether the run may still spend, swaps the token for the real
credential, and streams the upstream answer back as it arrives (never buffered), reading the
token usage out of it on the way. The credential is never logged nor sent back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from orchestrator.gateway.pricing import PriceTable, Usage
from orchestrator.gateway.tokens import Credential, RunTokens, TokenInfo

log = logging.getLogger(__name__)

BUDGET_STATUS = 402
BUDGET_ERROR = "billing_error"
"""A budget refusal. Checked with claude 2.1.332: a 402 ends the run after one request with
``is_error`` and our message. A 400 makes it resend five times with fewer betas, a 403 adds
"Failed to authenticate", and 429/5xx are retried with backoff."""

OAUTH_BETA = "oauth-2025-04-20"
"""The beta the Messages API needs before it accepts an OAuth Bearer token."""

# Never forwarded upstream: the run token, hop-by-hop headers, and what httpx sets itself.
_DROP_REQUEST = frozenset({
    "x-api-key", "authorization", "host", "content-length", "connection", "keep-alive",
    "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "accept-encoding",
})
# Never passed back: hop-by-hop headers, what the ASGI server sets, and encodings already undone.
_DROP_RESPONSE = frozenset({
    "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
    "upgrade", "trailer", "date", "server", "set-cookie",
})
_MAX_METERED = 16 * 1024 * 1024  # bytes of one JSON answer or SSE event read for usage

OnUsage = Callable[[TokenInfo, str, int, int, float], None]
CheckBudget = Callable[[TokenInfo], str | None]


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    """An error in the Messages API's shape, which the CLI shows to its user."""
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status)


def run_token_of(request: Request) -> str | None:
    """The run token the container sent as its API key (``x-api-key`` or Bearer)."""
    if key := request.headers.get("x-api-key"):
        return key.strip()
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class UsageMeter:
    """Reads model and usage out of an answer's bytes as they pass; never changes them."""

    def __init__(self, content_type: str) -> None:
        self.sse = "text/event-stream" in content_type
        self.json = not self.sse and "json" in content_type
        self.model: str | None = None
        self.seen = False
        self._counts: dict[str, int] = {}
        self._buffer = b""

    @property
    def usage(self) -> Usage:
        return Usage(**self._counts)

    def feed(self, chunk: bytes) -> None:
        if not (self.sse or self.json):
            return
        self._buffer += chunk
        if self.json:
            if len(self._buffer) > _MAX_METERED:
                self.json, self._buffer = False, b""
            return
        self._buffer = self._buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            self._read_event(event)
        if len(self._buffer) > _MAX_METERED:
            self._buffer = b""

    def finish(self) -> None:
        if self.json and self._buffer:
            message = _loads(self._buffer)
            if isinstance(message, dict):
                self._take(message.get("model"), message.get("usage"))
        elif self.sse and self._buffer.strip():
            self._read_event(self._buffer)
        self._buffer = b""

    def _read_event(self, event: bytes) -> None:
        # Only message_start and message_delta carry usage; skip the many content deltas.
        if b"message_start" not in event and b"message_delta" not in event:
            return
        data = b"\n".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        payload = _loads(data)
        if not isinstance(payload, dict):
            return
        if payload.get("type") == "message_start" and isinstance(payload.get("message"), dict):
            message = payload["message"]
            self._take(message.get("model"), message.get("usage"))
        elif payload.get("type") == "message_delta":
            self._take(None, payload.get("usage"))

    def _take(self, model: Any, usage: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model
        if not isinstance(usage, dict):
            return
        self.seen = True
        # Counts are running totals, so a later event's value replaces an earlier one.
        for name in Usage.__dataclass_fields__:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._counts[name] = value


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class Relay:
    """Handles ``/v1/messages``; one per gateway app, sharing one upstream connection pool."""

    def __init__(
        self,
        *,
        tokens: RunTokens,
        upstream: str,
        credential: Credential | None,
        on_usage: OnUsage,
        check_budget: CheckBudget,
        prices: PriceTable,
    ) -> None:
        self.tokens = tokens
        self.upstream = upstream.rstrip("/")
        self._credential = credential
        self._on_usage = on_usage
        self._check_budget = check_budget
        self._prices = prices
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"Relay(upstream={self.upstream!r}, credential={self._credential!r})"

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                # A long answer may pause between events; the CLI's own default is 600 s.
                timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=60.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def messages(self, request: Request) -> Response:
        token = run_token_of(request)
        info = self.tokens.lookup(token) if token else None
        if info is None:
            why = "no run token" if not token else "unknown or revoked run token"
            log.warning("gateway refused %s %s: %s", request.method, request.url.path, why)
            return error_response(
                401, "authentication_error",
                f"ad-sandbox gateway: {why}; only a live ad-sandbox run may call the model API",
            )
        try:
            reason = await anyio.to_thread.run_sync(self._check_budget, info)
        except Exception as exc:
            log.exception("budget check failed for run %s", info.run_id)
            return error_response(
                500, "api_error", f"ad-sandbox gateway: budget check failed: {exc}"
            )
        if reason is not None:
            log.info("budget refusal for run %s: %s", info.run_id, reason)
            return error_response(
                BUDGET_STATUS, BUDGET_ERROR, f"ad-sandbox budget exhausted: {reason}"
            )
        body = await request.body()
        url = self.upstream + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        outgoing = self.client.build_request(
            request.method, url, headers=self._upstream_headers(request), content=body
        )
        try:
            answer = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            log.warning("model API %s unreachable for run %s: %r", self.upstream, info.run_id, exc)
            return error_response(
                502, "api_error",
                f"ad-sandbox gateway could not reach the model API at {self.upstream} "
                f"({type(exc).__name__}: {exc or 'no detail'}); check settings.model_api.upstream",
            )
        meter = UsageMeter(answer.headers.get("content-type", ""))
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP_RESPONSE}
        return StreamingResponse(
            self._pass_through(answer, meter, info, _model_of(body)),
            status_code=answer.status_code,
            headers=headers,
        )

    def _upstream_headers(self, request: Request) -> list[tuple[str, str]]:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST]
        # Identity keeps the bytes readable for metering and identical to what upstream sent.
        headers.append(("accept-encoding", "identity"))
        credential = self._credential
        if credential is None:
            return headers
        if credential.kind == "api_key":
            headers.append(("x-api-key", credential.value))
            return headers
        headers.append(("authorization", f"Bearer {credential.value}"))
        betas = [v for k, v in headers if k.lower() == "anthropic-beta"]
        if not any(OAUTH_BETA in v for v in betas):
            headers = [(k, v) for k, v in headers if k.lower() != "anthropic-beta"]
            headers.append(("anthropic-beta", ",".join([*betas, OAUTH_BETA])))
        return headers

    async def _pass_through(
        self, answer: httpx.Response, meter: UsageMeter, info: TokenInfo, asked: str | None
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in answer.aiter_bytes():
                meter.feed(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            # Headers are out already; ending the stream short is all that is left to do.
            log.warning("model API answer broke off for run %s: %r", info.run_id, exc)
        finally:
            # Shielded: a client that hangs up still spent what was metered so far.
            with anyio.CancelScope(shield=True):
                await answer.aclose()
                meter.finish()
                if meter.seen:
                    await self._report(info, meter.model or asked or "unknown", meter.usage)

    async def _report(self, info: TokenInfo, model: str, usage: Usage) -> None:
        usd = self._prices.cost(model, usage)
        log.info(
            "run %s model %s tokens in %d out %d cost $%.6f",
            info.run_id, model, usage.total_input, usage.output_tokens, usd,
        )
        try:
            await anyio.to_thread.run_sync(
                self._on_usage, info, model, usage.total_input, usage.output_tokens, usd
            )
        except Exception:
            log.exception("on_usage failed for run %s", info.run_id)


def _model_of(body: bytes) -> str | None:
    request = _loads(body)
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else None
