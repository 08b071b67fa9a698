"""The gateway app and the server that runs it in a background thread.

The app owns the model relay; other routes (the agents' ``/mcp``) are added with
``extra_routes`` and, when they need startup/shutdown work, ``lifespan``. Anything no route
serves is refused by the relay's *messages only* rule (a 403 in the Messages API's error
shape), so a route added to the router after the app is built would never be reached: pass
it in ``extra_routes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from orchestrator.errors import SandboxError
from orchestrator.gateway.budget import BudgetGate, CallbackGate
from orchestrator.gateway.capabilities import COUNT_TOKENS_PATH, MESSAGES_PATH
from orchestrator.gateway.pricing import Price, PriceTable
from orchestrator.gateway.relay import CheckBudget, OnAnswer, OnUsage, Relay
from orchestrator.gateway.tokens import Credential, RunTokens

log = logging.getLogger(__name__)

START_DEADLINE = 10.0
STOP_DEADLINE = 10.0

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_gateway_app(
    *,
    tokens: RunTokens,
    upstream: str,
    credential: Credential | None,
    on_usage: OnUsage | None = None,
    check_budget: CheckBudget | None = None,
    budget: BudgetGate | None = None,
    prices: Mapping[str, Price] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    lifespan: Lifespan | None = None,
    on_answer: OnAnswer | None = None,
) -> Starlette:
    """The gateway's ASGI app: ``POST /v1/messages`` (and ``/count_tokens``) plus ``extra_routes``;
    any other request gets a 403 (:mod:`orchestrator.gateway.capabilities`).

    ``upstream`` is the model API's base URL; ``credential`` None sends no credential (the
    stub). ``on_usage(info, model, input_tokens, output_tokens, usd)`` is called from a worker
    thread after each answer that reported usage; ``check_budget(info)`` before each forward,
    a string return refusing it. ``budget`` replaces both with a gate that holds each
    request's largest cost and caps its ``max_tokens`` (the real gateway's ledger; see
    :mod:`orchestrator.gateway.budget`). ``prices`` override the built-in table per model.
    ``on_answer(info, answer)`` records each complete model answer (what a run's result is
    checked against), before the answer's last bytes reach the container.
    """
    if budget is None:
        budget = CallbackGate(check_budget or (lambda info: None),
                              on_usage or (lambda *usage: None))
    relay = Relay(
        tokens=tokens,
        upstream=upstream,
        credential=credential,
        budget=budget,
        prices=PriceTable(prices),
        on_answer=on_answer,
    )

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            await relay.aclose()

    routes: list[BaseRoute] = [
        Route(MESSAGES_PATH, relay.messages, methods=["POST"]),
        Route(COUNT_TOKENS_PATH, relay.count_tokens, methods=["POST"]),
        *extra_routes,
        # Last: whatever no route above serves fully (another path, or another method on a
        # relayed path) is refused here, never answered 404/405 or redirected.
        Route("/{path:path}", _Refuse(relay)),
    ]
    app = Starlette(routes=routes, lifespan=run)
    app.state.relay = relay
    return app


class _Refuse:
    """The relay's refusal as a plain ASGI app: a Route over a function would answer only
    GET, and every other method with a 405 instead of the refusal."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._relay.refuse(Request(scope, receive))
        await response(scope, receive, send)


class GatewayServer:
    """Uvicorn serving ``app`` from a background thread with its own event loop."""

    def __init__(self, app: Starlette, host: str, port: int = 0, *,
                 lifespan: bool = True) -> None:
        self.app = app
        self.host = host
        self.lifespan = lifespan
        """False for a second server of an app another server already runs: the app's
        lifespan (the relay's client, the agents' MCP session manager) runs once."""
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> GatewayServer:
        """Bind, serve, and return once connections are accepted (deadline 10 s)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise SandboxError(
                f"gateway cannot listen on {self.host}:{self.port} ({exc.strerror or exc})",
                hint="Check that the address belongs to this host (the agents' network "
                "gateway) and that the port is free.",
                host=self.host,
                port=self.port,
            ) from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on" if self.lifespan else "off",
            loop="asyncio",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"gateway-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_DEADLINE
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                detail = repr(self._error) if self._error else "no answer within the deadline"
                raise SandboxError(
                    f"gateway on {self.url} did not start: {detail}",
                    hint="Look at the orchestrator log for the cause.",
                )
            time.sleep(0.01)  # polling uvicorn's started flag; it offers no event
        log.info("gateway listening on %s", self.url)
        return self

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # kept for start() to report
            self._error = exc
        finally:
            sock.close()

    def begin_stop(self) -> None:
        """Ask the server to stop without waiting for it. uvicorn's shutdown has about
        0.2 s of fixed pauses, so servers told together wind down together; :meth:`stop`
        then joins."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """Stop accepting, end open answers after a short grace, join the thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(STOP_DEADLINE)
        if thread.is_alive():
            server.force_exit = True
            thread.join(STOP_DEADLINE)
        self._server = self._thread = None

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
