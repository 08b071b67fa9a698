"""This process's gateway: the relay on the agents network's gateway address, plus the stub.

Budgets are checked against the shared ledger before every forwarded request, so they hold
across containers and processes; usage is written to the ledger after every answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.applications import Starlette

from orchestrator.config import Config
from orchestrator.gateway.server import GatewayServer, create_gateway_app
from orchestrator.gateway.tokens import RunTokens, TokenInfo, resolve_credential
from orchestrator.runtime.base import NetworkInfo
from orchestrator.state import StateStore
from orchestrator.stubapi import StubServer

log = logging.getLogger(__name__)

DAY_S = 86400.0


class Gateway:
    """Owns the relay server and (for ``upstream: stub``) the stub model it forwards to."""

    def __init__(
        self,
        config: Config,
        state: StateStore,
        network: NetworkInfo,
        *,
        run_budget: Callable[[TokenInfo], float],
        on_budget_refused: Callable[[TokenInfo, str], None],
    ) -> None:
        self.config = config
        self.state = state
        self.network = network
        self.tokens = RunTokens()
        self._run_budget = run_budget
        self._on_refused = on_budget_refused
        self._stub: StubServer | None = None
        self._server: GatewayServer | None = None
        self._app: Starlette | None = None
        self._extra: dict[int, GatewayServer] = {}

    @property
    def url(self) -> str:
        assert self._server is not None, "gateway not started"
        return self._server.url

    def start(self) -> Gateway:
        api = self.config.settings.model_api
        if api.is_stub:
            self._stub = StubServer("127.0.0.1", 0).start()
            upstream, credential = self._stub.url, None
        else:
            upstream = api.upstream
            credential = resolve_credential(api.credential)
        app = create_gateway_app(
            tokens=self.tokens,
            upstream=upstream,
            credential=credential,
            on_usage=self._on_usage,
            check_budget=self._check_budget,
            prices=api.prices or None,
        )
        self._app = app
        try:
            self._server = GatewayServer(app, host=self.network.gateway_ip, port=0).start()
        except BaseException:
            self.stop()
            raise
        log.info("gateway on %s → %s", self._server.url, "stub" if api.is_stub else upstream)
        return self

    def serve_also(self, url: str) -> bool:
        """Serve on ``url`` too (a dead process's gateway address, for runs this one adopts)."""
        parsed = urlsplit(url)
        if self._app is None or parsed.port is None or url == self.url:
            return url == self.url
        if parsed.port in self._extra:
            return True
        try:
            extra = GatewayServer(self._app, host=self.network.gateway_ip,
                                  port=parsed.port).start()
        except Exception as exc:  # the address is taken: the adopted run will say so
            log.warning("cannot serve the adopted gateway address %s: %s", url, exc)
            return False
        self._extra[parsed.port] = extra
        return True

    def stop(self) -> None:
        for extra in self._extra.values():
            extra.stop()
        self._extra.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._stub is not None:
            self._stub.stop()
            self._stub = None

    def _on_usage(self, info: TokenInfo, model: str, input_tokens: int, output_tokens: int,
                  usd: float) -> None:
        self.state.add_cost(info.run_id, info.root_id, usd, input_tokens, output_tokens)

    def _check_budget(self, info: TokenInfo) -> str | None:
        budget = self.config.settings.budget
        reason: str | None = None
        run_limit = self._run_budget(info)
        if (spent := self.state.spent_run(info.run_id)) >= run_limit:
            reason = f"run budget ${run_limit:.2f} spent (${spent:.4f})"
        elif (spent := self.state.spent_root(info.root_id)) >= budget.per_root:
            reason = f"root budget ${budget.per_root:.2f} spent (${spent:.4f})"
        elif (spent := self.state.spent_since(time.time() - DAY_S)) >= budget.daily:
            reason = f"daily budget ${budget.daily:.2f} spent (${spent:.4f} in 24 h)"
        if reason is not None:
            self._on_refused(info, reason)
        return reason
