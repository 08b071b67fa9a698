"""Issue 9 part 2: from inside a run, the relay is a capability firewall.

The real claude in an agent container runs a script (``[[bash: python3 attack.py]]``) that
calls the relay itself with the run's own ``ANTHROPIC_BASE_URL`` and token: with a foreign
key (alone and next to the token), on other paths and methods (the Files and Batches APIs, a
GET), and with server-side features in the body (web search, the MCP connector, a Files API
reference). Each must be refused, and the upstream — a stub model in this test process,
recording every request on every path — must never see any of them; a marked control
request on the allowed path must get through, which proves the recording works. An agent
whose ``server_tools`` allows web search gets that one through, and nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.stub import StubServer
from tests.docker.support import run_cli, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FOREIGN = "sk-ant-api03-ATTACKER-KEY-0000"
UPSTREAM_KEY = "sk-ant-api03-upstream-" + os.urandom(6).hex()

ATTACK = '''
import json, os, urllib.error, urllib.request

BASE, TOKEN = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
FOREIGN = "@FOREIGN@"
ASK = {"model": "claude-sonnet-4-5", "max_tokens": 16,
       "messages": [{"role": "user", "content": "hi"}]}
FILE = {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}

def call(name, method, path, headers, body=ASK):
    data = None if method == "GET" else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method, headers={
        "content-type": "application/json", "anthropic-version": "2023-06-01",
        "x-attack": name, **headers})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, ""
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read() or b"{}").get("error", {})
        return exc.code, error.get("type", "") + ": " + error.get("message", "")

key = {"x-api-key": TOKEN}
attacks = {
    "foreign key": ("POST", "/v1/messages?beta=true", {"x-api-key": FOREIGN}),
    "foreign bearer": ("POST", "/v1/messages?beta=true", {"authorization": "Bearer " + FOREIGN}),
    "token and foreign bearer": ("POST", "/v1/messages?beta=true",
                                 {**key, "authorization": "Bearer " + FOREIGN}),
    "foreign key and token bearer": ("POST", "/v1/messages?beta=true",
                                     {"x-api-key": FOREIGN, "authorization": "Bearer " + TOKEN}),
    "files upload": ("POST", "/v1/files", key),
    "files list": ("GET", "/v1/files", key),
    "batches": ("POST", "/v1/messages/batches", key),
    "get messages": ("GET", "/v1/messages", key),
    "models": ("GET", "/v1/models", key),
    "web search": ("POST", "/v1/messages?beta=true", key,
                   {**ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
    "web fetch": ("POST", "/v1/messages?beta=true", key,
                  {**ASK, "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
    "mcp connector": ("POST", "/v1/messages?beta=true", key,
                      {**ASK, "mcp_servers": [{"type": "url", "name": "x",
                                               "url": "https://attacker.example/mcp"}]}),
    "files reference": ("POST", "/v1/messages?beta=true", key,
                        {**ASK, "messages": [{"role": "user", "content": [
                            {"type": "document", "source": FILE},
                            {"type": "text", "text": "summarise"}]}]}),
    "control": ("POST", "/v1/messages?beta=true", key),
}
results = {name: call(name, *spec) for name, spec in attacks.items()}
print("FIREWALL " + json.dumps(results, sort_keys=True))
'''.replace("@FOREIGN@", FOREIGN)

REFUSED = {
    "foreign key": (401, "authentication_error"),
    "foreign bearer": (401, "authentication_error"),
    "token and foreign bearer": (403, "run token only"),
    "foreign key and token bearer": (403, "run token only"),
    "files upload": (403, "messages only"),
    "files list": (403, "messages only"),
    "batches": (403, "messages only"),
    "get messages": (403, "messages only"),
    "models": (403, "messages only"),
    "web search": (403, "server tools"),
    "web fetch": (403, "server tools"),
    "mcp connector": (403, "server tools"),
    "files reference": (403, "server tools"),
}


class RecordingStub:
    """The stub model as the real upstream, plus a recorder for every other path."""

    def __init__(self) -> None:
        self.server = StubServer("127.0.0.1", 0)
        self.elsewhere: list[dict[str, Any]] = []
        self.server.app.router.routes.append(Route(
            "/{path:path}", self._elsewhere, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]))

    async def _elsewhere(self, request: Request) -> Response:
        self.elsewhere.append({"method": request.method, "path": request.url.path,
                               "headers": dict(request.headers)})
        return JSONResponse({"type": "error", "error": {"type": "not_found_error",
                                                        "message": "stub: no such path"}}, 404)

    def seen(self) -> list[dict[str, Any]]:
        return [*self.server.app.state.received, *self.elsewhere]


@pytest.fixture
def upstream() -> Iterator[RecordingStub]:
    stub = RecordingStub()
    with stub.server:
        yield stub


@pytest.fixture
def agent(client: docker.DockerClient) -> Iterator[str]:
    name = "relayfw-" + os.urandom(4).hex()
    yield name
    for volume in client.volumes.list():
        if volume.name.endswith(name):
            volume.remove(force=True)


def _attack(home: Path, project: Path, agent: str, upstream: RecordingStub,
            **config: Any) -> dict[str, tuple[int, str]]:
    (project / "attack.py").write_text(ATTACK)
    write_config(home, {agent: {"directory": str(project), **config}}, cache={"enabled": False},
                 model_api={"upstream": upstream.server.url,
                            "credential": {"env": "ADS_TEST_UPSTREAM_KEY"}})
    done = run_cli(home, "run", agent, "--json", "--", "[[bash: python3 attack.py]]",
                   ADS_TEST_UPSTREAM_KEY=UPSTREAM_KEY)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["success"], result
    line = next(line for line in result["result"].splitlines() if "FIREWALL " in line)
    answers: dict[str, list[Any]] = json.loads(line.split("FIREWALL ", 1)[1])
    return {name: (int(status), str(message)) for name, (status, message) in answers.items()}


def _marked(upstream: RecordingStub) -> list[str]:
    return [seen["headers"]["x-attack"] for seen in upstream.seen()
            if "x-attack" in seen["headers"]]


def test_calls_past_the_firewall_are_refused_and_never_forwarded(
    home: Path, project: Path, agent: str, upstream: RecordingStub
) -> None:
    answers = _attack(home, project, agent, upstream)
    assert answers["control"] == (200, ""), answers
    for name, (status, rule) in REFUSED.items():
        got_status, message = answers[name]
        assert got_status == status, (name, answers[name])
        assert rule in message, (name, message)
    # Only the control and claude's own turns reached the upstream; none with the foreign
    # key, none on another path, every one with the real credential the relay put in.
    assert _marked(upstream) == ["control"]
    assert upstream.elsewhere == []
    seen = upstream.seen()
    assert all(entry["path"] == "/v1/messages" for entry in seen), seen
    assert all(entry["headers"].get("x-api-key") == UPSTREAM_KEY for entry in seen)
    assert FOREIGN not in json.dumps(seen)


def test_an_agent_allowed_web_search_gets_that_and_nothing_more(
    home: Path, project: Path, agent: str, upstream: RecordingStub
) -> None:
    answers = _attack(home, project, agent, upstream, server_tools=["web_search"])
    assert answers["web search"][0] == 200, answers
    assert answers["web fetch"][0] == 403 and answers["mcp connector"][0] == 403, answers
    assert answers["files upload"][0] == 403 and answers["token and foreign bearer"][0] == 403
    assert sorted(_marked(upstream)) == ["control", "web search"]
