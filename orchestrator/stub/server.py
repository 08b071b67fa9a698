"""Serve the stub model with uvicorn: in a background thread, or in the foreground."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from orchestrator.errors import AdSandboxError, UsageError
from orchestrator.stub.app import create_app

START_DEADLINE_S = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; binding here (not in uvicorn) tells us the port 0 became."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="Pick another --port (0 picks a free one) or stop what holds it.",
            host=host, port=port,
        ) from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    return uvicorn.Server(config)


class StubServer:
    """The stub model on a loopback port, served by uvicorn in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.app = create_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def received(self) -> list[dict[str, Any]]:
        """The requests served so far (see :mod:`orchestrator.stub.app`)."""
        return list(self.app.state.received)

    def start(self) -> StubServer:
        """Start serving; return once connections are accepted (deadline 10 s)."""
        sock = self._sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.url = url_of(sock)
        server = self._server = _server(self.app)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"stub-api-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_DEADLINE_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AdSandboxError(
                    f"the stub model did not start on {self.url} within {START_DEADLINE_S:g} s",
                    hint="Look for uvicorn errors above; try another port.",
                    url=self.url,
                )
            time.sleep(0.01)
        return self

    def begin_stop(self) -> None:
        """Stop accepting without waiting (open answers go on until :meth:`stop`), so it
        winds down alongside the servers stopped with it."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """Stop serving and wait for the thread (open streams are cut)."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=START_DEADLINE_S)
        if self._sock is not None:
            self._sock.close()
        self._server, self._thread, self._sock = None, None, None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve in the foreground until Ctrl-C; ``announce`` gets the URL once it listens."""
    sock = bind(host, port)
    # uvicorn shuts down on the first Ctrl-C, then re-raises it; a Ctrl-C that lands
    # before uvicorn took the signal is the same request to stop.
    with contextlib.suppress(KeyboardInterrupt), sock:
        announce(url_of(sock))
        _server(create_app()).run(sockets=[sock])
