"""Issue 7 item 9: an agent prints its secret raw and in the usual encodings.

None of those forms may reach the run's result, its log (``ad-sandbox logs``) or the
session transcript claude leaves on the agent's volume, which is read back after the run
with a throwaway container of the agent image.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import pytest

from orchestrator.runtime import images
from tests.docker.support import run_cli, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LEAK = r"""
s=$(cat /run/secrets/API_TOKEN)
echo "raw: $s"
for prefix in "" x xy; do printf '%s%s' "$prefix" "$s" | base64 -w0; echo; done
printf '%s' "$s" | od -An -tx1 | tr -d ' \n'; echo
printf '%s' "$s" | od -An -tx1 | tr -d ' \n' | tr a-f A-F; echo
python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$s"
python3 -c 'import sys; print(sys.argv[1][::-1])' "$s"
"""
"""Prints the secret raw, base64 at all three alignments, hex (both cases), URL-encoded and
reversed: each line of the tool's output lands in the answer, the log and the transcript."""


def leaked_forms(secret: str) -> dict[str, str]:
    """Each shape the script prints, cut to what the secret alone decides."""
    raw = secret.encode()
    forms = {"raw": secret, "hex": raw.hex(), "HEX": raw.hex().upper(),
             "url": quote(secret, safe=""), "reversed": secret[::-1]}
    for prefix in ("", "x", "xy"):
        # The base64 characters that depend on the secret's bytes only.
        skip = (3 - len(prefix)) % 3
        whole = (len(raw) - skip) // 3 * 3
        forms[f"base64+{len(prefix)}"] = base64.b64encode(raw[skip : skip + whole]).decode()
    return forms


@pytest.fixture
def agent(client: docker.DockerClient) -> Iterator[str]:
    name = "leak-" + os.urandom(4).hex()
    yield name
    for volume in client.volumes.list():
        if volume.name.endswith(name):
            volume.remove(force=True)


def volume_text(client: docker.DockerClient, agent: str) -> str:
    """Every file on the agent's volume(s), read by a throwaway container."""
    names = [v.name for v in client.volumes.list() if agent in v.name]
    assert names, f"no volume of agent {agent}"
    texts = []
    for name in names:
        output = client.containers.run(
            images.agent_ref(), ["sh", "-c", "find /v -type f -exec cat {} +"],
            volumes={name: {"bind": "/v", "mode": "ro"}}, network_mode="none", user="0:0",
            remove=True, name=f"leak-reader-{os.urandom(4).hex()}")
        texts.append(output.decode("utf-8", errors="replace"))
    return "\n".join(texts)


def run_with(home: Path, agent: str, secret: str, task: str, *args: str) -> dict[str, Any]:
    done = run_cli(home, "run", agent, "--json", *args, "--", task, LEAK_TOKEN=secret)
    assert done.stdout.strip(), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_secret_forms_leak_nowhere(
    home: Path, project: Path, agent: str, client: docker.DockerClient
) -> None:
    secret = f"tok/{os.urandom(10).hex()}+k&v=1"
    (project / "leak.sh").write_text(LEAK)
    write_config(home, {agent: {"directory": str(project),
                                "secrets": {"API_TOKEN": {"env": "LEAK_TOKEN"}}}},
                 cache={"enabled": False})
    done = run_cli(home, "run", agent, "--json", "--", "[[bash: bash leak.sh]]",
                   LEAK_TOKEN=secret)
    result = json.loads(done.stdout)
    assert result["success"], result
    assert result["result"].count("[redacted:API_TOKEN]") >= 8, result["result"]
    logs = run_cli(home, "logs", result["run_id"]).stdout
    assert "[redacted:API_TOKEN]" in logs
    record = run_cli(home, "job", result["run_id"], "--json").stdout  # last_action too
    assert "[redacted:API_TOKEN]" in record
    transcript = volume_text(client, agent)
    assert "[redacted:API_TOKEN]" in transcript, "the transcript was not written"
    for where, text in (("result", result["result"]), ("stdout", done.stdout),
                        ("stderr", done.stderr), ("logs", logs), ("record", record),
                        ("transcript", transcript)):
        for form_name, form in leaked_forms(secret).items():
            assert form not in text, f"{form_name} form of the secret in the {where}"


def test_a_resumed_session_keeps_its_history_readable(
    home: Path, project: Path, agent: str
) -> None:
    secret = "pw-" + os.urandom(8).hex()
    write_config(home, {agent: {"directory": str(project),
                                "secrets": {"API_TOKEN": {"env": "LEAK_TOKEN"}}}},
                 cache={"enabled": False})
    first = run_with(home, agent, secret, "[[bash: cat /run/secrets/API_TOKEN]]")
    assert first["result"] == "tool result: [redacted:API_TOKEN]", first
    # The transcript was rewritten after the run: the session must still resume from it.
    second = run_with(home, agent, secret, "[[reply: still here]]",
                      "--session", first["session_id"])
    assert second["success"] and second["result"] == "still here", second
    assert second["session_id"] == first["session_id"]


def test_a_killed_runs_transcript_is_scrubbed_too(
    home: Path, project: Path, agent: str, client: docker.DockerClient
) -> None:
    secret = "pw-" + os.urandom(8).hex()
    write_config(home, {agent: {"directory": str(project),
                                "secrets": {"API_TOKEN": {"env": "LEAK_TOKEN"}}}},
                 cache={"enabled": False})
    # The first tool's result reaches the transcript; the second outlives the deadline.
    slow = ("[[bash: cat /run/secrets/API_TOKEN]] "
            "[[bash: python3 -c 'import time; time.sleep(60)']]")
    result = run_with(home, agent, secret, slow, "--timeout", "10")
    assert result["exit_reason"] == "timeout", result
    transcript = volume_text(client, agent)
    assert "[redacted:API_TOKEN]" in transcript, "the secret never reached the transcript"
    assert secret not in transcript
    leftovers = client.containers.list(all=True, filters={"name": "ads-scrub-"})
    assert not [c for c in leftovers if agent in str(c.labels)], "a scrub helper was left"
