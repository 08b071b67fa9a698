"""The budget gate of a real gateway: holds and bookings in the shared SQLite ledger.

Every process's gateway reserves in the same ``ledger_holds`` table under one write lock, so
the run's, the root's and the day's budgets bound the requests in flight across containers
and processes, not only what has been metered so far.

It fails closed: a cost that cannot be written to the ledger is kept in memory, the run is
told to stop, and every request is refused until that cost is on record, so the budgets
never let through spend nobody recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.gateway.budget import Ask, Hold, Spend
from orchestrator.gateway.tokens import TokenInfo
from orchestrator.state.ledger import Headroom, LedgerMixin, Limits

log = logging.getLogger(__name__)

SHOWN_USD = 0.00005
"""Less than this shows as $0.0000: call it nothing."""
HOLD_WAIT_S = 120.0
"""How long a request refused only for what others hold waits for those holds to settle."""
HOLD_POLL_S = 0.2


@dataclass(frozen=True)
class _Unbooked:
    """A settled call whose cost the ledger refused to record; booked at the next chance."""

    info: TokenInfo
    hold: Hold
    spend: Spend
    why: str


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
        wait_s: float = HOLD_WAIT_S,
    ) -> None:
        self._ledger = ledger
        self._wait_s = wait_s
        self._limits = limits
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._unbooked: list[_Unbooked] = []

    def reserve(self, info: TokenInfo, ask: Ask) -> Hold | str:
        if (unrecorded := self._book_unbooked()) is not None:
            self._on_refused(info, unrecorded)
            return unrecorded
        granted: tuple[int, float] | None = None

        def size(left: float) -> float | None:
            nonlocal granted
            granted = ask.grant(left)
            return None if granted is None else granted[1]

        deadline = time.monotonic() + self._wait_s
        while True:
            granted = None
            reservation = self._ledger.reserve(
                info.run_id, info.root_id, self._limits(info), size
            )
            if reservation.id is not None and granted is not None:
                break
            if not fits_once_settled(reservation.headroom, ask) or time.monotonic() > deadline:
                break
            # Refused only for what requests in flight hold (runs of one tree, or of one
            # pipeline, sharing a budget): they settle to their metered cost, far below their
            # holds, so wait for them rather than fail a run that spent nothing.
            time.sleep(HOLD_POLL_S)
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
        """Book ``spend``; a ledger that refuses the write stops the run and every request."""
        try:
            return self._book(info, hold, spend)
        except Exception as exc:
            why = (f"the cost of a model call of run {info.run_id} (${spend.usd:.6f}) could not "
                   f"be recorded in the ledger ({type(exc).__name__}: {exc}); no model call is "
                   "forwarded until it is")
            log.error("run %s: %s", info.run_id, why)
            with self._lock:
                self._unbooked.append(_Unbooked(info, hold, spend, why))
            self._on_refused(info, why)
            raise

    def _book_unbooked(self) -> str | None:
        """Record the costs a failed write left in memory; why not, while one still fails."""
        with self._lock:
            while self._unbooked:
                first = self._unbooked[0]
                try:
                    self._book(first.info, first.hold, first.spend)
                except Exception as exc:
                    log.warning("run %s: its cost is still not recorded: %s",
                                first.info.run_id, exc)
                    return first.why
                self._unbooked.pop(0)
                log.info("run %s: the cost left unrecorded is now booked", first.info.run_id)
        return None

    def _book(self, info: TokenInfo, hold: Hold, spend: Spend) -> float:
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


def fits_once_settled(headroom: Headroom, ask: Ask) -> bool:
    """Whether ``ask`` would be granted if every hold in flight were released: then a
    refusal is only a matter of waiting."""
    if not any(level.held > 0 for level in headroom.levels):
        return False
    return min(level.limit - level.spent for level in headroom.levels) >= ask.cheapest()


def refusal(headroom: Headroom, ask: Ask) -> str:
    """Why a request was refused, naming the tightest budget."""
    level = headroom.tightest
    if level.left < SHOWN_USD:
        return f"{level.describe()}; nothing left"
    return (f"{level.describe()}; ${level.left:.4f} left, less than the smallest "
            f"request of this size holds (${ask.cheapest():.4f})")
