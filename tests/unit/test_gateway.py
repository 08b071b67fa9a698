"""The model relay against a fake upstream on loopback: auth, pass-through, metering, budget."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestrator.config import EnvSource, FileSource
from orchestrator.errors import ConfigError
from orchestrator.gateway.pricing import PriceTable, Usage
from orchestrator.gateway.relay import OAUTH_BETA
from orchestrator.gateway.server import GatewayServer, create_gateway_app
from orchestrator.gateway.tokens import Credential, RunTokens, TokenInfo, resolve_credential
from orchestrator.stub.server import StubServer

WAIT = 10.0
INFO = TokenInfo(run_id="r1", root_id="r0", agent="coder", depth=1, caller="root")
SECRET = "sk-ant-api03-real-secret-value"
CLIENT_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219",
    "x-claude-code-session-id": "s-123",
}


@dataclass
class FakeUpstream:
    """A Messages API stand-in that records what reached it and what it sent."""

    url: str = ""
    model: str = "claude-sonnet-4-5"
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 10, "output_tokens": 2})
    status: int = 200
    hold: bool = False  # stop after message_start until `release` is set
    seen: list[dict[str, Any]] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)
    release: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append({
            "headers": dict(request.headers), "query": request.url.query, "body": body,
        })
        if self.status != 200:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
            return self._json(error, self.status)
        if not body.get("stream"):
            message = {
                "id": "msg_1", "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": self.usage,
            }
            return self._json(message, 200)
        return StreamingResponse(self._events(), media_type="text/event-stream; charset=utf-8")

    def _json(self, payload: dict[str, Any], status: int) -> Response:
        content = json.dumps(payload, indent=1).encode()
        self.sent += content
        return Response(content, status_code=status, media_type="application/json")

    async def _events(self) -> AsyncIterator[bytes]:
        start_usage = {k: v for k, v in self.usage.items() if k != "output_tokens"}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": self.model,
                "content": [], "usage": {**start_usage, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "hel"}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "lo"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": self.usage.get("output_tokens", 0)}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        for number, (name, data) in enumerate(events):
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            self.sent += chunk
            yield chunk
            if number == 0 and self.hold:
                await anyio.to_thread.run_sync(self.release.wait, WAIT)
        self.finished.set()


class UsageLog:
    def __init__(self) -> None:
        self.calls: list[tuple[TokenInfo, str, int, int, float]] = []
        self.called = threading.Event()

    def __call__(self, info: TokenInfo, model: str, tin: int, tout: int, usd: float) -> None:
        self.calls.append((info, model, tin, tout, usd))
        self.called.set()


@pytest.fixture
def servers() -> Iterator[list[GatewayServer]]:
    started: list[GatewayServer] = []
    yield started
    for server in reversed(started):
        server.stop()


@pytest.fixture
def upstream(servers: list[GatewayServer]) -> FakeUpstream:
    fake = FakeUpstream()
    app = Starlette(routes=[Route("/v1/messages", fake.messages, methods=["POST"])])
    servers.append(GatewayServer(app, "127.0.0.1").start())
    fake.url = servers[-1].url
    return fake


@dataclass
class Gateway:
    url: str
    tokens: RunTokens
    usage: UsageLog
    token: str

    def post(self, body: dict[str, Any], *, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {**CLIENT_HEADERS, "x-api-key": token if token is not None else self.token}
        return httpx.post(
            f"{self.url}/v1/messages?beta=true", json=body, headers=headers, timeout=WAIT, **kw
        )


@pytest.fixture
def gateway(servers: list[GatewayServer], upstream: FakeUpstream) -> Callable[..., Gateway]:
    def make(
        *,
        upstream_url: str | None = None,
        credential: Credential | None = None,
        budget: Callable[[TokenInfo], str | None] = lambda info: None,
        **kw: Any,
    ) -> Gateway:
        tokens, usage = RunTokens(), UsageLog()
        app = create_gateway_app(
            tokens=tokens,
            upstream=upstream_url or upstream.url,
            credential=credential,
            on_usage=usage,
            check_budget=budget,
            **kw,
        )
        servers.append(GatewayServer(app, "127.0.0.1").start())
        return Gateway(servers[-1].url, tokens, usage, tokens.issue(INFO))

    return make


def ask(stream: bool = False) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    return str(body["error"]["message"])


# --- run tokens and credentials ---------------------------------------------------------------


def test_tokens_issue_lookup_revoke() -> None:
    tokens = RunTokens()
    first, second = tokens.issue(INFO), tokens.issue(INFO)
    other = tokens.issue(TokenInfo("r2", "r0", "coder", 1, "root"))
    assert first.startswith("ads-run-") and first != second
    assert tokens.lookup(first) == INFO
    tokens.revoke(first)
    assert tokens.lookup(first) is None and tokens.lookup(second) == INFO
    tokens.revoke_run("r1")
    assert tokens.lookup(second) is None
    assert tokens.lookup(other) is not None
    assert tokens.lookup("ads-run-guess") is None and tokens.lookup("") is None


def test_credential_repr_hides_value() -> None:
    credential = Credential(SECRET, "api_key")
    assert SECRET not in repr(credential) and SECRET not in str(credential)


def test_resolve_credential(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    assert resolve_credential(None, "ANTHROPIC_API_KEY") is None
    monkeypatch.setenv("ADS_TEST_KEY", SECRET + "\n")
    assert resolve_credential(EnvSource(env="ADS_TEST_KEY"), "X") == Credential(SECRET, "api_key")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "opaque")
    oauth = resolve_credential(EnvSource(env="CLAUDE_CODE_OAUTH_TOKEN"), "X")
    assert oauth is not None and oauth.kind == "oauth"
    path = tmp_path / "key"
    path.write_text("sk-ant-oat01-abc\n")
    assert resolve_credential(FileSource(file=str(path)), "X") == Credential(
        "sk-ant-oat01-abc", "oauth"
    )
    monkeypatch.delenv("ADS_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError) as missing:
        resolve_credential(EnvSource(env="ADS_TEST_MISSING"), "ANTHROPIC_API_KEY")
    assert "ADS_TEST_MISSING" in missing.value.message
    assert "ANTHROPIC_API_KEY" in missing.value.hint
    with pytest.raises(ConfigError):
        resolve_credential(FileSource(file=str(tmp_path / "absent")), "ANTHROPIC_API_KEY")


# --- pricing ----------------------------------------------------------------------------------


def test_price_table() -> None:
    table = PriceTable({"claude-opus-4-5": (5.0, 25.0), "my-model": (2.0, 4.0)})
    assert table.price("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert table.price("claude-opus-4-1") == (15.0, 75.0)
    assert table.price("claude-opus-4-5-20251101") == (5.0, 25.0)
    assert table.price("claude-haiku-4-5") == (1.0, 5.0)
    assert table.price("claude-stub") == (3.0, 15.0)
    assert table.price("MY-MODEL") == (2.0, 4.0)
    usage = Usage(input_tokens=1000, output_tokens=100,
                  cache_creation_input_tokens=2000, cache_read_input_tokens=10000)
    assert usage.total_input == 13000
    expected = (1000 * 3 + 2000 * 3 * 1.25 + 10000 * 3 * 0.1 + 100 * 15) / 1e6
    assert table.cost("claude-sonnet-4-5", usage) == pytest.approx(expected)
    with pytest.raises(ConfigError):
        PriceTable({"bad": (-1.0, 1.0)})


# --- the relay --------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "wrong", "ads-run-unknown", "revoked"])
def test_refuses_missing_wrong_or_revoked_token(
    gateway: Callable[..., Gateway], upstream: FakeUpstream, token: str
) -> None:
    gw = gateway()
    if token == "revoked":
        gw.tokens.revoke(gw.token)
        token = gw.token
    headers = {**CLIENT_HEADERS, **({"x-api-key": token} if token else {})}
    response = httpx.post(f"{gw.url}/v1/messages", json=ask(), headers=headers, timeout=WAIT)
    message = assert_anthropic_error(response, 401, "authentication_error")
    assert "run token" in message
    assert upstream.seen == []


def test_bearer_run_token_is_accepted(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    headers = {**CLIENT_HEADERS, "authorization": f"Bearer {gw.token}"}
    response = httpx.post(f"{gw.url}/v1/messages", json=ask(), headers=headers, timeout=WAIT)
    assert response.status_code == 200


def test_json_relayed_unchanged_and_metered(
    gateway: Callable[..., Gateway], upstream: FakeUpstream
) -> None:
    upstream.model = "claude-opus-4-1"
    upstream.usage = {"input_tokens": 100, "output_tokens": 20,
                      "cache_creation_input_tokens": 40, "cache_read_input_tokens": 1000}
    gw = gateway()
    response = gw.post(ask())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == bytes(upstream.sent)
    assert gw.usage.called.wait(WAIT)
    [(info, model, tin, tout, usd)] = gw.usage.calls
    assert (info, model, tin, tout) == (INFO, "claude-opus-4-1", 1140, 20)
    assert usd == pytest.approx((100 * 15 + 40 * 15 * 1.25 + 1000 * 15 * 0.1 + 20 * 75) / 1e6)
    seen = upstream.seen[0]
    assert seen["query"] == "beta=true"
    assert seen["body"] == ask()
    for name, value in CLIENT_HEADERS.items():
        assert seen["headers"][name] == value


def test_sse_relayed_unchanged_and_metered(
    gateway: Callable[..., Gateway], upstream: FakeUpstream
) -> None:
    upstream.model = "claude-stub"
    upstream.usage = {"input_tokens": 1000, "output_tokens": 500}
    gw = gateway(prices={"claude-stub": (2.0, 4.0)})
    response = gw.post(ask(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content == bytes(upstream.sent)
    assert b"message_stop" in response.content
    assert gw.usage.called.wait(WAIT)
    [(_, model, tin, tout, usd)] = gw.usage.calls
    assert (model, tin, tout) == ("claude-stub", 1000, 500)
    assert usd == pytest.approx((1000 * 2 + 500 * 4) / 1e6)


def test_stream_is_not_buffered(gateway: Callable[..., Gateway], upstream: FakeUpstream) -> None:
    upstream.hold = True
    gw = gateway()
    headers = {**CLIENT_HEADERS, "x-api-key": gw.token}
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=ask(stream=True),
                      headers=headers, timeout=WAIT) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        # The upstream is still held after its first event, so nothing waited for the end.
        assert not upstream.finished.is_set()
        assert first.startswith(b"event: message_start")
        upstream.release.set()
        rest = b"".join(chunks)
    assert first + rest == bytes(upstream.sent)
    assert upstream.finished.is_set()


def test_upstream_error_status_passes_through_unmetered(
    gateway: Callable[..., Gateway], upstream: FakeUpstream
) -> None:
    upstream.status = 529
    gw = gateway()
    response = gw.post(ask(stream=True))
    assert_anthropic_error(response, 529, "overloaded_error")
    assert response.content == bytes(upstream.sent)
    assert gw.usage.calls == []


def test_budget_refusal_is_final_and_never_forwarded(
    gateway: Callable[..., Gateway], upstream: FakeUpstream
) -> None:
    asked: list[TokenInfo] = []

    def budget(info: TokenInfo) -> str | None:
        asked.append(info)
        return "run r1 spent $1.02 of its $1.00"

    gw = gateway(budget=budget)
    response = gw.post(ask(stream=True))
    message = assert_anthropic_error(response, 402, "billing_error")
    assert message == "ad-sandbox budget exhausted: run r1 spent $1.02 of its $1.00"
    assert asked == [INFO]
    assert upstream.seen == []


@pytest.mark.parametrize("kind", ["api_key", "oauth"])
def test_credential_injected_and_never_returned(
    gateway: Callable[..., Gateway],
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = gateway(credential=Credential(SECRET, kind))  # type: ignore[arg-type]
    for stream in (False, True):
        response = gw.post(ask(stream=stream))
        assert response.status_code == 200
        assert SECRET not in response.text and SECRET not in str(response.headers)
    for seen in upstream.seen:
        headers = seen["headers"]
        assert gw.token not in json.dumps(headers)
        if kind == "api_key":
            assert headers["x-api-key"] == SECRET and "authorization" not in headers
        else:
            assert headers["authorization"] == f"Bearer {SECRET}" and "x-api-key" not in headers
            assert headers["anthropic-beta"] == f"claude-code-20250219,{OAUTH_BETA}"
    assert SECRET not in caplog.text and gw.token not in caplog.text


def test_no_credential_for_the_stub(
    gateway: Callable[..., Gateway], upstream: FakeUpstream
) -> None:
    gw = gateway(credential=None)
    assert gw.post(ask()).status_code == 200
    headers = upstream.seen[0]["headers"]
    assert "x-api-key" not in headers and "authorization" not in headers


def test_upstream_down_is_a_502_api_error(gateway: Callable[..., Gateway]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    gw = gateway(upstream_url=closed)
    message = assert_anthropic_error(gw.post(ask()), 502, "api_error")
    assert closed in message and "could not reach the model API" in message
    assert gw.usage.calls == []


def test_extra_routes_are_served(servers: list[GatewayServer]) -> None:
    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    app = create_gateway_app(
        tokens=RunTokens(), upstream="http://127.0.0.1:9", credential=None,
        on_usage=UsageLog(), check_budget=lambda info: None,
        extra_routes=[Route("/ping", ping)],
    )
    servers.append(GatewayServer(app, "127.0.0.1").start())
    assert httpx.get(f"{servers[-1].url}/ping", timeout=WAIT).text == "pong"


@pytest.mark.parametrize("stream", [False, True])
def test_relays_the_stub_model(servers: list[GatewayServer], stream: bool) -> None:
    with StubServer() as stub:
        tokens, usage = RunTokens(), UsageLog()
        app = create_gateway_app(tokens=tokens, upstream=stub.url, credential=None,
                                 on_usage=usage, check_budget=lambda info: None)
        servers.append(GatewayServer(app, "127.0.0.1").start())
        gw = Gateway(servers[-1].url, tokens, usage, tokens.issue(INFO))
        body = {**ask(stream), "messages": [{"role": "user", "content": "hi [[usage: 30 4]]"}]}
        response = gw.post(body)
        assert response.status_code == 200
        assert b"echo: hi" in response.content
        assert usage.called.wait(WAIT)
        assert [call[1:4] for call in usage.calls] == [("claude-sonnet-4-5", 30, 4)]
        body["messages"] = [{"role": "user", "content": "[[status: 529]]"}]
        assert_anthropic_error(gw.post(body), 529, "overloaded_error")
