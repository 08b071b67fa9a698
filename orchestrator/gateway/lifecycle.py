"""This process's gateway: the relay on the agents network's gateway address, plus the stub.

Every forwarded request first holds its largest cost in the shared ledger (its
``max_tokens`` cut to what the run's, root's and day's budgets can pay), so budgets hold
across containers, processes and requests in flight; the metered usage replaces the hold
after the answer, never booking more than was held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from orchestrator.config import Config
from orchestrator.gateway.ledger_gate import LedgerGate
from orchestrator.gateway.ports import listen_in_range
from orchestrator.gateway.server import GatewayServer, Lifespan, create_gateway_app
from orchestrator.gateway.tokens import RunTokens, TokenInfo, resolve_credential
from orchestrator.runtime.base import NetworkInfo
from orchestrator.state import RelayedAnswer, StateStore
from orchestrator.state.ledger import Limits
from orchestrator.stub import StubServer

log = logging.getLogger(__name__)

DAY_S = 86400.0

ExtraRoutes = Callable[[RunTokens], tuple[Sequence[BaseRoute], Lifespan | None]]


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
        extra: ExtraRoutes | None = None,
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
        self._extra_routes = extra
        """Builds more routes over this gateway's tokens: the agents' ``/mcp``."""

    @property
    def mcp_url(self) -> str | None:
        """The agents' MCP endpoint on this gateway, when it serves one."""
        return f"{self.url}/mcp" if self._extra_routes is not None else None

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
        routes, lifespan = ((), None) if self._extra_routes is None else self._extra_routes(
            self.tokens)
        app = create_gateway_app(
            extra_routes=routes,
            lifespan=lifespan,
            tokens=self.tokens,
            upstream=upstream,
            credential=credential,
            budget=LedgerGate(self.state, limits=self._limits, on_refused=self._on_refused),
            prices=api.prices or None,
            on_answer=self._on_answer,
        )
        self._app = app
        try:
            self._server = listen_in_range(app, self.network.gateway_ip)
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
                                  port=parsed.port, lifespan=False).start()
        except Exception as exc:  # the address is taken: the adopted run will say so
            log.warning("cannot serve the adopted gateway address %s: %s", url, exc)
            return False
        self._extra[parsed.port] = extra
        return True

    def stop(self) -> None:
        for server in (*self._extra.values(), self._server, self._stub):
            if server is not None:
                server.begin_stop()  # all wind down at once; each stop() below joins
        for extra in self._extra.values():
            extra.stop()
        self._extra.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._stub is not None:
            self._stub.stop()
            self._stub = None

    def _on_answer(self, info: TokenInfo, answer: RelayedAnswer) -> None:
        self.state.record_answer(info.run_id, answer)

    def _limits(self, info: TokenInfo) -> Limits:
        budget = self.config.settings.budget
        root = (budget.per_root if info.root_budget_usd is None
                else min(budget.per_root, info.root_budget_usd))
        return Limits(run=self._run_budget(info), root=root, daily=budget.daily,
                      day_since=time.time() - DAY_S)
