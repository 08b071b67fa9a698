"""The model relay: ``POST /v1/messages`` from a container, on to the real model API.

It refuses what the container may not ask of the API (other paths, foreign keys, server
tools its agent was not given; see :mod:`orchestrator.gateway.capabilities`), checks the run
token, holds the request's largest cost against the budgets (cutting its
``max_tokens`` to what they can pay, see :mod:`orchestrator.gateway.budget`), swaps the token
for the real credential, and streams the upstream answer back as it arrives (never buffered),
reading the token usage out of it on the way; then books that usage, at most the hold. The
credential is never logged nor sent back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from orchestrator.gateway.answers import SESSION_HEADER, AnswerTap
from orchestrator.gateway.budget import (
    MAX_BODY_BYTES,
    BadBody,
    BudgetGate,
    Hold,
    Spend,
    ask_of,
    capped_body,
    parse_body,
)
from orchestrator.gateway.capabilities import (
    COUNT_TOKENS_PATH,
    MESSAGES_PATH,
    Refusal,
    body_refusal,
    presented_token,
    route_refusal,
)
from orchestrator.gateway.pricing import PriceTable, Usage
from orchestrator.gateway.tokens import Credential, RunTokens, TokenInfo
from orchestrator.state.answers import RelayedAnswer

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
OnAnswer = Callable[[TokenInfo, RelayedAnswer], None]
"""Called (from a worker thread) with each complete answer, before its last bytes go out."""


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    """An error in the Messages API's shape, which the CLI shows to its user."""
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status)


def _refused(request: Request, refusal: Refusal, run_id: str | None = None) -> Response:
    log.warning("gateway refused %s %s%s: %s", request.method, request.url.path,
                f" for run {run_id}" if run_id else "", refusal.text)
    return error_response(refusal.status, refusal.kind, refusal.text)


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
        self.complete = False
        """The answer's end was seen (``message_stop`` or the whole JSON message): usage final."""
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
                self.complete = isinstance(message.get("usage"), dict)
        elif self.sse and self._buffer.strip():
            self._read_event(self._buffer)
        self._buffer = b""

    def _read_event(self, event: bytes) -> None:
        # Only message_start and message_delta carry usage, message_stop the end; skip the
        # many content deltas.
        if not any(name in event for name in (b"message_start", b"message_delta",
                                              b"message_stop")):
            return
        data = b"\n".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        payload = _loads(data)
        if not isinstance(payload, dict):
            return
        if payload.get("type") == "message_stop":
            self.complete = True
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
        creation = usage.get("cache_creation")
        hour = creation.get("ephemeral_1h_input_tokens") if isinstance(creation, dict) else None
        if isinstance(hour, int) and not isinstance(hour, bool) and hour >= 0:
            self._counts["cache_creation_1h_input_tokens"] = hour


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
        budget: BudgetGate,
        prices: PriceTable,
        on_answer: OnAnswer | None = None,
    ) -> None:
        self.tokens = tokens
        self._on_answer = on_answer
        self.upstream = upstream.rstrip("/")
        self._credential = credential
        self._budget = budget
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
        """``POST /v1/messages``."""
        return await self._relay(request, MESSAGES_PATH)

    async def count_tokens(self, request: Request) -> Response:
        """``POST /v1/messages/count_tokens``."""
        return await self._relay(request, COUNT_TOKENS_PATH)

    async def refuse(self, request: Request) -> Response:
        """Every other path and method: never forwarded."""
        refusal = route_refusal(request.method, request.url.path, request.url.query)
        assert refusal is not None, "a relayed route reached the refusal"
        return _refused(request, refusal)

    async def _relay(self, request: Request, path: str) -> Response:
        refusal = route_refusal(request.method, path, request.url.query)
        if refusal is not None:  # the route matched; a query other than ?beta=true did not
            return _refused(request, refusal)
        token = presented_token(request.headers.getlist("x-api-key"),
                                request.headers.getlist("authorization"))
        if isinstance(token, Refusal):
            return _refused(request, token)
        info = self.tokens.lookup(token) if token else None
        if info is None:
            why = "no run token" if not token else "unknown or revoked run token"
            log.warning("gateway refused %s %s: %s", request.method, request.url.path, why)
            return error_response(
                401, "authentication_error",
                f"ad-sandbox gateway: {why}; only a live ad-sandbox run may call the model API",
            )
        counting = path == COUNT_TOKENS_PATH
        try:
            raw = await _read_body(request)
            parsed = parse_body(raw)
            ask = ask_of(parsed, len(raw), self._prices, counting=counting)
        except BadBody as exc:
            return error_response(
                413 if "too large" in str(exc) else 400, "invalid_request_error",
                f"ad-sandbox gateway: {exc}",
            )
        # Checked on the parsed body, which is what is re-serialised and forwarded.
        if (refusal := body_refusal(parsed, info.server_tools, info.agent)) is not None:
            return _refused(request, refusal, info.run_id)
        try:
            hold = await anyio.to_thread.run_sync(self._budget.reserve, info, ask)
        except Exception as exc:
            log.exception("budget check failed for run %s", info.run_id)
            return error_response(
                500, "api_error", f"ad-sandbox gateway: budget check failed: {exc}"
            )
        if isinstance(hold, str):
            log.info("budget refusal for run %s: %s", info.run_id, hold)
            return error_response(
                BUDGET_STATUS, BUDGET_ERROR, f"ad-sandbox budget exhausted: {hold}"
            )
        body = capped_body(parsed, hold)
        url = self.upstream + path
        if request.url.query:  # "beta=true", the only query relayed
            url += "?" + request.url.query
        outgoing = self.client.build_request(
            request.method, url, headers=self._upstream_headers(request), content=body
        )
        try:
            answer = await self.client.send(outgoing, stream=True)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._release(info, hold)
            if not isinstance(exc, httpx.HTTPError):
                raise
            log.warning("model API %s unreachable for run %s: %r", self.upstream, info.run_id, exc)
            return error_response(
                502, "api_error",
                f"ad-sandbox gateway could not reach the model API at {self.upstream} "
                f"({type(exc).__name__}: {exc or 'no detail'}); check settings.model_api.upstream",
            )
        meter = UsageMeter(answer.headers.get("content-type", ""))
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP_RESPONSE}
        tap = None
        if self._on_answer is not None and not counting and answer.status_code == 200:
            tap = AnswerTap(answer.headers.get("content-type", ""),
                            answer.headers.get("content-length"),
                            request.headers.get(SESSION_HEADER))
        return StreamingResponse(
            self._tapped(self._pass_through(answer, meter, info, ask.model, hold), tap, info),
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
        self, answer: httpx.Response, meter: UsageMeter, info: TokenInfo, asked: str,
        hold: Hold,
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
                if meter.seen or answer.status_code < 400:
                    await self._settle(info, hold, meter, meter.model or asked)
                else:  # an error answer with no usage: the API bills nothing for it
                    await self._release(info, hold)

    async def _tapped(
        self, chunks: AsyncIterator[bytes], tap: AnswerTap | None, info: TokenInfo
    ) -> AsyncIterator[bytes]:
        """``chunks`` unchanged; the answer they carry is recorded before its last bytes go
        out, so the run's result can never be checked before its answer is on record."""
        try:
            async for chunk in chunks:
                if tap is not None and tap.feed(chunk):
                    await self._record_answer(info, tap)
                yield chunk
            if tap is not None and tap.finish():
                await self._record_answer(info, tap)
        finally:
            if isinstance(chunks, AsyncGenerator):  # its own clean-up (booking) runs now
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()

    async def _record_answer(self, info: TokenInfo, tap: AnswerTap) -> None:
        assert self._on_answer is not None
        try:
            await anyio.to_thread.run_sync(self._on_answer, info, tap.answer())
        except Exception:  # the run's result then fails its check: it ends crashed, not forged
            log.exception("recording the answer failed for run %s", info.run_id)

    async def _settle(self, info: TokenInfo, hold: Hold, meter: UsageMeter, model: str) -> None:
        usage = meter.usage
        usd = self._prices.cost(model, usage)
        spend = Spend(model, usage.total_input, usage.output_tokens, usd,
                      seen=meter.seen, complete=meter.complete)
        try:
            booked = await anyio.to_thread.run_sync(self._budget.settle, info, hold, spend)
        except Exception:
            log.exception("booking the cost failed for run %s", info.run_id)
            return
        log.info(
            "run %s model %s tokens in %d out %d cost $%.6f booked $%.6f",
            info.run_id, model, usage.total_input, usage.output_tokens, usd, booked,
        )

    async def _release(self, info: TokenInfo, hold: Hold) -> None:
        try:
            await anyio.to_thread.run_sync(self._budget.release, info, hold)
        except Exception:
            log.exception("releasing a budget hold failed for run %s", info.run_id)


async def _read_body(request: Request) -> bytes:
    """The request body, refused past ``MAX_BODY_BYTES`` before it is all in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadBody(f"the request body is too large (over {MAX_BODY_BYTES} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadBody(f"the request body is too large (over {MAX_BODY_BYTES} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)

