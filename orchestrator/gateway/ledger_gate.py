"""The budget gate of a real gateway: holds and bookings in the shared SQLite ledger.

Every process's gateway reserves in the same ``ledger_holds`` table under one write lock, so
the run's, the root's and the day's budgets bound the requests in flight across containers
and processes, not only what has been metered so far.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator.gateway.budget import Ask, Hold, Spend
from orchestrator.gateway.tokens import TokenInfo
from orchestrator.state.ledger import Headroom, LedgerMixin, Limits

log = logging.getLogger(__name__)

SHOWN_USD = 0.00005
"""Less than this shows as $0.0000: call it nothing."""


class LedgerGate:
    """:class:`orchestrator.gateway.budget.BudgetGate` over the state's ledger.

    ``limits(info)`` gives the budgets of a run (read at each request, so a config reload
    applies); ``on_refused(info, reason)`` hears every refusal, so the run can be told why
    it stopped.
    """

    def __init__(
        self,
        ledger: LedgerMixin,
        *,
        limits: Callable[[TokenInfo], Limits],
        on_refused: Callable[[TokenInfo, str], None],
    ) -> None:
        self._ledger = ledger
        self._limits = limits
        self._on_refused = on_refused

    def reserve(self, info: TokenInfo, ask: Ask) -> Hold | str:
        granted: tuple[int, float] | None = None

        def size(left: float) -> float | None:
            nonlocal granted
            granted = ask.grant(left)
            return None if granted is None else granted[1]

        reservation = self._ledger.reserve(
            info.run_id, info.root_id, self._limits(info), size
        )
        if reservation.id is None or granted is None:
            reason = refusal(reservation.headroom, ask)
            self._on_refused(info, reason)
            return reason
        tokens, usd = granted
        if ask.max_tokens is not None and tokens < ask.max_tokens:
            log.info("run %s: max_tokens %d cut to %d ($%.6f left)",
                     info.run_id, ask.max_tokens, tokens, reservation.headroom.left)
        return Hold(reservation.id, usd, None if ask.max_tokens is None else tokens)

    def settle(self, info: TokenInfo, hold: Hold, spend: Spend) -> float:
        booked = self._ledger.settle(
            hold.id, info.run_id, info.root_id,
            held_usd=hold.usd, metered_usd=spend.usd,
            input_tokens=spend.input_tokens, output_tokens=spend.output_tokens,
            complete=spend.complete,
        )
        if spend.usd > hold.usd:
            log.warning(
                "run %s: OVERRUN model %s metered $%.6f (in %d out %d) above its hold "
                "$%.6f; booked the hold", info.run_id, spend.model, spend.usd,
                spend.input_tokens, spend.output_tokens, hold.usd,
            )
        elif not spend.complete:
            log.warning("run %s: answer cut off before its final usage; booked the whole "
                        "hold $%.6f", info.run_id, hold.usd)
        return booked

    def release(self, info: TokenInfo, hold: Hold) -> None:
        self._ledger.release(hold.id)


def refusal(headroom: Headroom, ask: Ask) -> str:
    """Why a request was refused, naming the tightest budget."""
    level = headroom.tightest
    if level.left < SHOWN_USD:
        return f"{level.describe()}; nothing left"
    return (f"{level.describe()}; ${level.left:.4f} left, less than the smallest "
            f"request of this size holds (${ask.cheapest():.4f})")
