"""The stub model over real HTTP on loopback: every directive, in JSON and in SSE."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from orchestrator.errors import UsageError
from orchestrator.stub import StubServer
from orchestrator.stub.directives import find_directives, user_text

MESSAGES = "/v1/messages?beta=true"


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def client(stub: StubServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stub.url, timeout=10) as http:
        yield http


def body(content: Any, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    messages = content if isinstance(content, list) and "role" in content[0] else [
        {"role": "user", "content": content}
    ]
    return {"model": "claude-test", "max_tokens": 100, "stream": stream, "messages": messages,
            **extra}


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Split an SSE body into (event, data) pairs, checking that each has both lines."""
    events = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


def assemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Rebuild the final message from its events, as a client would."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    message: dict[str, Any] = events[0][1]["message"]
    partial: dict[int, str] = {}
    for name, data in events[1:]:
        if name == "content_block_start":
            assert data["index"] == len(message["content"])
            message["content"].append(dict(data["content_block"]))
        elif name == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and data["index"] in partial:
            message["content"][data["index"]]["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"]["output_tokens"] = data["usage"]["output_tokens"]
    return message


def ask(client: httpx.Client, content: Any, *, stream: bool) -> dict[str, Any]:
    response = client.post(MESSAGES, json=body(content, stream=stream))
    assert response.status_code == 200, response.text
    if not stream:
        assert response.headers["content-type"].startswith("application/json")
        return dict(response.json())
    assert response.headers["content-type"].startswith("text/event-stream")
    return assemble(parse_sse(response.text))


both = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


@both
def test_echo_plain_text(client: httpx.Client, stream: bool) -> None:
    message = ask(client, "hello stub", stream=stream)
    assert message["content"] == [{"type": "text", "text": "echo: hello stub"}]
    assert message["stop_reason"] == "end_turn"
    assert message["role"] == "assistant" and message["model"] == "claude-test"
    assert message["usage"]["input_tokens"] == 10 and message["usage"]["output_tokens"] == 5


@both
def test_reads_last_user_message_without_system_reminders(
    client: httpx.Client, stream: bool
) -> None:
    # The shape claude 2.1.332 sends: reminder block, prompt block, then a role:system entry.
    messages = [
        {"role": "user", "content": "[[reply: old]]"},
        {"role": "assistant", "content": "old"},
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\n[[reply: no]]\n</system-reminder>"},
            {"type": "text", "text": "the prompt\n"},
        ]},
        {"role": "system", "content": [{"type": "text", "text": "# Environment"}]},
    ]
    message = ask(client, messages, stream=stream)
    assert message["content"][0]["text"] == "echo: the prompt"


@both
def test_reply_verbatim_and_long_text_joins(client: httpx.Client, stream: bool) -> None:
    text = "Hello, World! " * 10 + "ünïcode"
    message = ask(client, f"ignored [[reply: {text.strip()}]]", stream=stream)
    assert message["content"] == [{"type": "text", "text": text.strip()}]


def test_text_streams_in_several_deltas(client: httpx.Client) -> None:
    response = client.post(MESSAGES, json=body("[[reply: " + "x" * 100 + "]]", stream=True))
    deltas = [d for name, d in parse_sse(response.text) if name == "content_block_delta"]
    assert len(deltas) > 1


@both
def test_bash_directive_gives_a_tool_use(client: httpx.Client, stream: bool) -> None:
    message = ask(client, "run [[bash: [[ -d / ]] && echo hi]] please", stream=stream)
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["name"] == "Bash"
    assert block["input"] == {"command": "[[ -d / ]] && echo hi"}
    assert block["id"].startswith("toolu_")


@both
def test_tool_directive_with_json_input(client: httpx.Client, stream: bool) -> None:
    prompt = '[[tool: mcp__ad__run {"agent": "a", "n": [[1, 2]], "s": "x y"}]]'
    message = ask(client, prompt, stream=stream)
    [block] = message["content"]
    assert block["name"] == "mcp__ad__run"
    assert block["input"] == {"agent": "a", "n": [[1, 2]], "s": "x y"}


def test_tool_directive_without_input_and_reply_first(client: httpx.Client) -> None:
    message = ask(client, "[[tool: Glob]] [[reply: looking]] [[bash: ls]]", stream=True)
    assert [b["type"] for b in message["content"]] == ["text", "tool_use", "tool_use"]
    assert message["content"][1]["input"] == {} and message["content"][2]["name"] == "Bash"
    ids = {b["id"] for b in message["content"][1:]}
    assert len(ids) == 2


@both
def test_tool_result_turn_quotes_the_result(client: httpx.Client, stream: bool) -> None:
    messages = [
        {"role": "user", "content": "[[bash: echo hi]]"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "echo hi"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "hi"},
            {"type": "tool_result", "tool_use_id": "t2",
             "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]},
    ]
    message = ask(client, messages, stream=stream)
    assert message["content"] == [{"type": "text", "text": "tool result: hi\ntool result: a\nb"}]
    assert message["stop_reason"] == "end_turn"


@both
def test_usage_directive(client: httpx.Client, stream: bool) -> None:
    message = ask(client, "[[usage: 123 45]] count me", stream=stream)
    assert message["usage"]["input_tokens"] == 123 and message["usage"]["output_tokens"] == 45
    assert message["content"][0]["text"] == "echo: count me"


def test_usage_split_across_stream_events(client: httpx.Client) -> None:
    response = client.post(MESSAGES, json=body("[[usage: 7 3]]", stream=True))
    events = dict(parse_sse(response.text))
    assert events["message_start"]["message"]["usage"]["input_tokens"] == 7
    assert events["message_start"]["message"]["usage"]["output_tokens"] == 0
    assert events["message_delta"]["usage"] == {"output_tokens": 3}


ERRORS = [(400, "invalid_request_error"), (401, "authentication_error"),
          (403, "permission_error"), (429, "rate_limit_error"), (500, "api_error"),
          (503, "api_error"), (529, "overloaded_error")]


@both
@pytest.mark.parametrize(("code", "kind"), ERRORS)
def test_status_directive(client: httpx.Client, stream: bool, code: int, kind: str) -> None:
    response = client.post(MESSAGES, json=body(f"[[status: {code}]] [[reply: x]]", stream=stream))
    assert response.status_code == code
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert str(code) in error["error"]["message"]


@pytest.mark.parametrize("prompt", [
    "[[tool: T {not json}]]", "[[tool: T [1]]]", "[[status: 200]]", "[[sleep: x]]",
    "[[usage: 1]]", "[[sleep: -1]]",
])
def test_bad_directive_is_a_400(client: httpx.Client, prompt: str) -> None:
    response = client.post(MESSAGES, json=body(prompt))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"messages": []}',
                                     b'{"messages": [{"role": "assistant", "content": "x"}]}'])
def test_bad_request_body_is_a_400(client: httpx.Client, payload: bytes) -> None:
    response = client.post(MESSAGES, content=payload)
    assert response.status_code == 400
    assert response.json()["type"] == "error"


def test_sleep_json_waits(client: httpx.Client) -> None:
    started = time.monotonic()
    message = ask(client, "[[sleep: 0.4]] [[reply: late]]", stream=False)
    assert time.monotonic() - started >= 0.4
    assert message["content"][0]["text"] == "late"


def test_sleep_stream_sends_message_start_first(client: httpx.Client) -> None:
    with client.stream("POST", MESSAGES, json=body("[[sleep: 0.4]] hi", stream=True)) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "event: message_start"
        first = time.monotonic()
        rest = list(lines)
    assert time.monotonic() - first >= 0.3
    assert rest[-2] == "data: " + json.dumps({"type": "message_stop"}, separators=(",", ":"))


@pytest.mark.anyio
async def test_sleep_does_not_block_other_requests(stub: StubServer) -> None:
    async with httpx.AsyncClient(base_url=stub.url, timeout=10) as http:
        slow = http.stream("POST", MESSAGES, json=body("[[sleep: 30]] slow", stream=True))
        async with slow as response:
            lines = response.aiter_lines()
            assert await anext(lines) == "event: message_start"
            with anyio.fail_after(5):
                fast = await http.post(MESSAGES, json=body("fast"))
            assert fast.json()["content"][0]["text"] == "echo: fast"


def test_ids_are_deterministic(client: httpx.Client) -> None:
    first = client.post(MESSAGES, json=body("[[bash: true]]")).json()
    again = client.post(MESSAGES, json=body("[[bash: true]]")).json()
    other = client.post(MESSAGES, json=body("[[bash: false]]")).json()
    assert first == again
    assert first["id"] != other["id"]
    assert first["content"][0]["id"] != other["content"][0]["id"]


def test_plain_path_without_query_and_request_log(stub: StubServer, client: httpx.Client) -> None:
    response = client.post("/v1/messages", json=body("logged"),
                           headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert response.json()["content"][0]["text"] == "echo: logged"
    last = stub.received[-1]
    assert last["path"] == "/v1/messages" and last["headers"]["x-api-key"] == "k"
    assert last["body"]["messages"][0]["content"] == "logged"


def test_count_tokens(client: httpx.Client) -> None:
    response = client.post("/v1/messages/count_tokens", json=body("[[usage: 42 1]]"))
    assert response.json() == {"input_tokens": 42}


@pytest.mark.parametrize("path", ["/", "/health"])
def test_readiness(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200
    assert client.head(path).status_code == 200


def test_other_paths_get_anthropic_errors(client: httpx.Client) -> None:
    missing = client.get("/v1/models")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/messages")
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"


def test_server_lifecycle_and_busy_port() -> None:
    server = StubServer().start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url + "/health").status_code == 200
        with pytest.raises(UsageError, match="cannot listen"):
            StubServer(port=server.port).start()
    finally:
        server.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def test_find_directives_cuts_them_out() -> None:
    found, rest = find_directives("a [[usage: 1 2]] b [[bash: [[ x ]]]] c [[reply: open")
    assert found == [("usage", "1 2"), ("bash", "[[ x ]]")]
    assert rest == "a b c [[reply: open"


def test_user_text_drops_inline_reminders() -> None:
    message = {"role": "user", "content": [
        {"type": "text", "text": "x <system-reminder>noise</system-reminder> y"},
        {"type": "image", "source": {}},
    ]}
    assert user_text(message) == "x  y"
