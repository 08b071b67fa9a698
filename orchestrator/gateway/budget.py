"""Bounding what one model request may cost before it is forwarded.

A request's cost is bounded before anything leaves the gateway: its input by the size of the
body, its output by ``max_tokens``, which the gateway cuts to what the remaining budget can
pay. A :class:`BudgetGate` holds that bound against the budgets (atomically across
processes, see :mod:`orchestrator.state.ledger`) and, once the answer is in, books the
metered cost — never more than was held, so an upstream that reports any usage at all
cannot push the ledger past a budget.

The body is hostile input: it is parsed once here, and the bytes forwarded are the ones
measured and capped (re-serialised), so no parser difference between us and the upstream
(a duplicate ``max_tokens`` key, say) can reopen the bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.gateway.pricing import (
    CACHE_WRITE_1H_FACTOR,
    CACHE_WRITE_FACTOR,
    LONG_CONTEXT_INPUT_FACTOR,
    LONG_CONTEXT_OUTPUT_FACTOR,
    LONG_CONTEXT_TOKENS,
    PriceTable,
)
from orchestrator.gateway.tokens import TokenInfo

BYTES_PER_TOKEN = 2
"""Input tokens are bounded by body bytes / 2. Ordinary text, code and JSON tokenize at about
3.5 to 4 bytes a token, so this holds twice what an honest request reads; a byte-per-token bound
would hold four times and starve long sessions. Crafted text (rare characters, one symbol per
token) can beat it by up to 2x on the input part: that excess is never booked past the hold
and is logged as an overrun (see ``settle``)."""
INPUT_OVERHEAD_TOKENS = 512
"""What the API adds itself: the tool-use system prompt and message framing."""
MEDIA_TOKENS = 6_000
"""Per image block: the API scales images down to about 1.15 megapixels (about 1,600 tokens),
whatever their bytes, so a tiny file of huge dimensions is not bounded by its size."""
DOCUMENT_TOKENS = 100 * 3_000
"""Per document block: up to 100 pages, each billed as text plus a page image."""
MAX_CONTEXT_TOKENS = 1_000_000
"""No model reads more in one request (the API refuses longer prompts unbilled)."""
MIN_OUTPUT_TOKENS = 1_024
"""A request that cannot afford this many output tokens (or what it asked, if fewer) is
refused rather than forwarded to be cut off mid-sentence."""
MAX_BODY_BYTES = 32 * 1024 * 1024
"""The Messages API's own request size limit."""
THINKING_MIN_BUDGET = 1_024
"""The API's smallest ``thinking.budget_tokens``, which must stay below ``max_tokens``."""


class BadBody(ValueError):
    """The request body is not a Messages API request the gateway can bound."""


@dataclass(frozen=True)
class Ask:
    """The most one request can cost, before its output is cut to the budget."""

    model: str
    input_usd: float
    """Worst case for the whole input: all of it priced as cache writes, for an hour when
    the request asks for any 1-hour cache (the dearest input there is)."""
    usd_per_output_token: float
    max_tokens: int | None
    """What the client asked for; None for a request with no output (token counting)."""

    def grant(self, left: float) -> tuple[int, float] | None:
        """The output tokens and USD to hold when ``left`` dollars remain; None: refuse."""
        if self.max_tokens is None:
            return (0, self.input_usd) if left > 0 and self.input_usd <= left else None
        spare = left - self.input_usd
        if spare <= 0:
            return None
        affordable = (
            self.max_tokens if self.usd_per_output_token <= 0
            else math.floor(spare / self.usd_per_output_token)
        )
        granted = min(self.max_tokens, affordable)
        if granted < min(self.max_tokens, MIN_OUTPUT_TOKENS) or granted < 1:
            return None
        return granted, self.input_usd + granted * self.usd_per_output_token

    def cheapest(self) -> float:
        """What the smallest request this one could be cut to still holds."""
        floor = 0 if self.max_tokens is None else min(self.max_tokens, MIN_OUTPUT_TOKENS)
        return self.input_usd + floor * self.usd_per_output_token


@dataclass(frozen=True)
class Hold:
    """A reservation: ``usd`` held for one request, with ``max_tokens`` granted."""

    id: int | None
    usd: float
    max_tokens: int | None


@dataclass(frozen=True)
class Spend:
    """What an answer cost, as metered.

    ``seen``: it reported any usage; ``complete``: it reached its end (the last SSE event or
    the whole JSON message), so the usage is final. An incomplete answer (the client hung up,
    the stream broke) may have been billed for output nobody metered.
    """

    model: str
    input_tokens: int
    output_tokens: int
    usd: float
    seen: bool
    complete: bool


class BudgetGate(Protocol):
    """Holds a request's bound before it is forwarded and books its cost after."""

    def reserve(self, info: TokenInfo, ask: Ask) -> Hold | str:
        """A hold for ``ask``, or the reason it is refused (a budget is spent)."""
        ...

    def settle(self, info: TokenInfo, hold: Hold, spend: Spend) -> float:
        """Book ``spend`` in place of ``hold``, at most ``hold.usd``; return what was booked."""
        ...

    def release(self, info: TokenInfo, hold: Hold) -> None:
        """Drop ``hold``: the request never reached the model or was not billed."""
        ...


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object. Raises :class:`BadBody`."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadBody("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadBody("the request body must be a JSON object")
    return body


def ask_of(body: dict[str, Any], size: int, prices: PriceTable, *, counting: bool) -> Ask:
    """The bound of one request of ``size`` bytes. ``counting``: token counting (free).

    Raises :class:`BadBody` when a messages request has no usable ``max_tokens``.
    """
    model = body.get("model")
    model = model if isinstance(model, str) and model else "unknown"
    if counting:
        return Ask(model, 0.0, 0.0, None)
    asked = body.get("max_tokens")
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
        raise BadBody("max_tokens: a positive integer is required")
    scan = _scan(body)
    tokens = min(MAX_CONTEXT_TOKENS, _token_bound(scan, size))
    price_in, price_out = prices.price(model)
    if tokens > LONG_CONTEXT_TOKENS:
        price_in *= LONG_CONTEXT_INPUT_FACTOR
        price_out *= LONG_CONTEXT_OUTPUT_FACTOR
    # A cache write is the dearest input; an hour-long one only when a block asks for it.
    factor = CACHE_WRITE_1H_FACTOR if scan.hour_cache else CACHE_WRITE_FACTOR
    input_usd = tokens * price_in * factor / 1_000_000
    return Ask(model, input_usd, price_out / 1_000_000, asked)


def input_token_bound(body: dict[str, Any], size: int) -> int:
    """An upper bound of the input tokens a body of ``size`` bytes is billed for."""
    return _token_bound(_scan(body), size)


@dataclass(frozen=True)
class _Scan:
    images: int
    documents: int
    hour_cache: bool


def _token_bound(scan: _Scan, size: int) -> int:
    return (
        math.ceil(size / BYTES_PER_TOKEN) + INPUT_OVERHEAD_TOKENS
        + scan.images * MEDIA_TOKENS + scan.documents * DOCUMENT_TOKENS
    )


def _scan(body: dict[str, Any]) -> _Scan:
    # Iterative: a hostile body may nest as deep as the JSON parser allowed.
    images = documents = 0
    hour_cache = False
    stack: list[Any] = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if kind == "image":
                images += 1
            elif kind == "document":
                documents += 1
            control = item.get("cache_control")
            if isinstance(control, dict) and control.get("ttl") not in (None, "5m"):
                hour_cache = True  # "1h", or anything we do not know: the dearest
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return _Scan(images, documents, hour_cache)


def capped_body(body: dict[str, Any], hold: Hold) -> bytes:
    """The bytes to forward: ``body`` with ``max_tokens`` (and a thinking budget) cut to
    what ``hold`` pays for."""
    out = dict(body)
    if hold.max_tokens is not None:
        out["max_tokens"] = hold.max_tokens
        thinking = out.get("thinking")
        if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
            budget = min(thinking["budget_tokens"], hold.max_tokens - 1)
            if budget < THINKING_MIN_BUDGET:
                out.pop("thinking")  # no room left to think: answer without it
            else:
                out["thinking"] = {**thinking, "budget_tokens": budget}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


class CallbackGate:
    """A gate over two plain callbacks, with no holds: ``check(info)`` refuses with a
    reason, ``book(info, model, input_tokens, output_tokens, usd)`` records a cost.

    For tests and embedders that keep no ledger; budgets then bound nothing in flight.
    """

    def __init__(
        self,
        check: Callable[[TokenInfo], str | None],
        book: Callable[[TokenInfo, str, int, int, float], None],
    ) -> None:
        self._check = check
        self._book = book

    def reserve(self, info: TokenInfo, ask: Ask) -> Hold | str:
        reason = self._check(info)
        return reason if reason is not None else Hold(None, math.inf, ask.max_tokens)

    def settle(self, info: TokenInfo, hold: Hold, spend: Spend) -> float:
        if not spend.seen:
            return 0.0
        self._book(info, spend.model, spend.input_tokens, spend.output_tokens, spend.usd)
        return spend.usd

    def release(self, info: TokenInfo, hold: Hold) -> None:
        return None
