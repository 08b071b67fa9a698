"""Token counts and what they cost: a per-model price table, overridable from the config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.errors import ConfigError

Price = tuple[float, float]
"""USD per million tokens: (input, output)."""

DEFAULT_PRICES: Mapping[str, Price] = {
    "opus": (15.0, 75.0),
    "sonnet": (3.0, 15.0),
    "haiku": (1.0, 5.0),
}
"""By model family; a model matches the family its name contains."""

FALLBACK_FAMILY = "sonnet"
CACHE_READ_FACTOR = 0.1
CACHE_WRITE_FACTOR = 1.25
"""A 5-minute cache write; the default."""
CACHE_WRITE_1H_FACTOR = 2.0
"""A 1-hour cache write, the dearest input there is."""
LONG_CONTEXT_TOKENS = 200_000
LONG_CONTEXT_INPUT_FACTOR = 2.0
LONG_CONTEXT_OUTPUT_FACTOR = 1.5
"""A request that reads more than ``LONG_CONTEXT_TOKENS`` (a 1M-context model) is billed at
these multiples of the model's input and output prices."""


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer, as the Messages API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    """The part of ``cache_creation_input_tokens`` written for an hour (``usage.cache_creation
    .ephemeral_1h_input_tokens`` in the answer), billed at ``CACHE_WRITE_1H_FACTOR``."""

    @property
    def total_input(self) -> int:
        """Every input token the model read, cached or not."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


class PriceTable:
    """Prices per model: ``overrides`` (``settings.model_api.prices``) first, then defaults.

    A key matches a model when it equals the model name or is contained in it; the longest
    matching key wins, so ``claude-opus-4-5`` may be priced apart from ``opus``. A model no
    key matches costs what sonnet costs.
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._overrides = {k.lower(): _checked(k, v) for k, v in (overrides or {}).items()}

    def price(self, model: str) -> Price:
        """(input, output) USD per million tokens for ``model``."""
        name = model.lower()
        for table in (self._overrides, DEFAULT_PRICES):
            if name in table:
                return table[name]
            matches = [key for key in table if key in name]
            if matches:
                return table[max(matches, key=len)]
        return DEFAULT_PRICES[FALLBACK_FAMILY]

    def cost(self, model: str, usage: Usage) -> float:
        """USD for ``usage`` on ``model``; cache reads and writes priced off the input price."""
        price_in, price_out = self.price(model)
        if usage.total_input > LONG_CONTEXT_TOKENS:
            price_in *= LONG_CONTEXT_INPUT_FACTOR
            price_out *= LONG_CONTEXT_OUTPUT_FACTOR
        hour = usage.cache_creation_1h_input_tokens
        weighted_input = (
            usage.input_tokens
            + max(0, usage.cache_creation_input_tokens - hour) * CACHE_WRITE_FACTOR
            + hour * CACHE_WRITE_1H_FACTOR
            + usage.cache_read_input_tokens * CACHE_READ_FACTOR
        )
        return (weighted_input * price_in + usage.output_tokens * price_out) / 1_000_000


def _checked(model: str, price: Price) -> Price:
    price_in, price_out = price
    if price_in < 0 or price_out < 0:
        raise ConfigError(
            f"settings.model_api.prices[{model!r}] must not be negative, got {price}",
            hint="Give (input, output) USD per million tokens, e.g. [3.0, 15.0].",
        )
    return (float(price_in), float(price_out))
