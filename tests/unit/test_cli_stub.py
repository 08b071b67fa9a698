"""``ad-sandbox stub-api``: help, a real foreground run stopped by Ctrl-C, a busy port."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from orchestrator.cli.app import app
from orchestrator.stub import StubServer

CLI = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def test_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["stub-api", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "--port" in result.output


def test_busy_port_is_a_usage_error() -> None:
    with StubServer() as busy:
        result = CliRunner().invoke(app, ["stub-api", "--port", str(busy.port)])
    assert result.exit_code == 2
    assert "cannot listen" in result.output


@pytest.fixture
def foreground() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, "stub-api", "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_foreground_serves_until_ctrl_c(foreground: subprocess.Popen[str]) -> None:
    assert foreground.stderr is not None
    line = foreground.stderr.readline()  # ends when the URL is printed or the process dies
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match, line
    reply = httpx.post(match.group(0) + "/v1/messages", timeout=10,
                       json={"messages": [{"role": "user", "content": "[[reply: up]]"}]})
    assert reply.json()["content"] == [{"type": "text", "text": "up"}]
    foreground.send_signal(signal.SIGINT)
    assert foreground.wait(timeout=10) == 0
