"""Issue 10: egress through the proxy, performed for real by the real claude in agent containers.

An "outside world" of HTTP+HTTPS servers (``allowed.test``, ``other.allowed.test``,
``denied.test``; a throwaway CA handed to the run through the project) sits on the proxy's
egress network, as real hosts would. The agent acts through ``[[bash: ...]]`` tasks running
``egress_probe.py`` (copied into the project), which prints one line per attempt.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from orchestrator.run.egress import EGRESS_NETWORK, LABEL_ROLE, ROLE
from tests.docker.egress_world import EgressWorld
from tests.docker.support import run_cli, run_json, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROBE = Path(__file__).with_name("egress_probe.py")


@dataclass
class Outside:
    world: EgressWorld
    client: docker.DockerClient


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    """`ad-sandbox up` for an allowlist agent starts the proxy (and its egress network); the
    world's servers then join that network."""
    home = tmp_path_factory.mktemp("egress-up")
    project = tmp_path_factory.mktemp("egress-up-proj")
    write_config(home, {"upper": {"directory": str(project), "network": {"egress": "allowlist"},
                                  "allow_hosts": ["allowed.test"]}})
    done = run_cli(home, "up", timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(r"egress proxy: [\d.]+:3128", done.stdout), done.stdout
    client = docker.from_env()
    with EgressWorld(client, EGRESS_NETWORK) as world:
        yield Outside(world, client)
    client.close()


def project_with_probe(tmp_path: Path, world: EgressWorld) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    shutil.copy(PROBE, folder / "probe.py")
    shutil.copy(world.ca_pem, folder / "ca.pem")
    return folder


def probe(*args: str) -> str:
    return f"[[bash: python3 /workspace/probe.py {' '.join(args)}]]"


def lines_of(result: dict[str, Any]) -> dict[str, str]:
    """``VERB TARGET -> OUTCOME`` lines of the probe, by ``VERB TARGET``."""
    found = {}
    for line in str(result["result"]).splitlines():
        head, sep, outcome = line.partition(" -> ")
        if sep:
            found[head.removeprefix("tool result: ").strip()] = outcome.strip()
    return found


def proxy_ids(client: docker.DockerClient) -> list[str]:
    return [c.id for c in client.containers.list(all=True,
                                                 filters={"label": f"{LABEL_ROLE}={ROLE}"})]


def test_an_allowlist_lets_through_only_its_hosts_by_name_and_sni(
    outside: Outside, home: Path, tmp_path: Path
) -> None:
    world = outside.world
    project = project_with_probe(tmp_path, world)
    write_config(home, {"fenced": {"directory": str(project), "network": {"egress": "allowlist"},
                                   "allow_hosts": ["allowed.test", "*.allowed.test"]}})
    task = probe(
        "get", "http://allowed.test/", "get", "https://allowed.test/",
        "get", "https://other.allowed.test/",
        "get", "http://denied.test/", "get", "https://denied.test/",
        "direct", world.address("allowed.test"), "443",
        "direct", world.address("denied.test"), "80",
        "sni", "allowed.test", "denied.test", "sni", "allowed.test", "allowed.test",
        "dns", "denied.test",
    )
    code, result = run_json(home, "fenced", task)
    assert code == 0, result
    seen = lines_of(result)
    assert seen["GET http://allowed.test/"] == "OK 200 allowed.test http", seen
    # HTTPS with certificate checks on: the proxy splices, it never intercepts.
    assert seen["GET https://allowed.test/"] == "OK 200 allowed.test https", seen
    assert seen["GET https://other.allowed.test/"] == "OK 200 other.allowed.test https", seen
    assert seen["GET http://denied.test/"] == "HTTP 403 policy-page", seen
    assert "403" in seen["GET https://denied.test/"], seen  # the CONNECT is refused
    assert seen[f"DIRECT {world.address('allowed.test')}:443"].startswith("SHUT"), seen
    assert seen[f"DIRECT {world.address('denied.test')}:80"].startswith("SHUT"), seen
    assert seen["SNI allowed.test/denied.test"].startswith("REFUSED"), seen
    assert seen["SNI allowed.test/allowed.test"] == "PASSED allowed.test https", seen
    assert seen["DNS denied.test"].startswith("NONE"), seen
    assert result["denied_hosts"] == ["denied.test"], result
    net = run_cli(home, "logs", result["run_id"], "--net")
    assert net.returncode == 0, net.stderr
    assert re.search(r"allowed\s+\d+\s+allowed\.test", net.stdout), net.stdout
    assert re.search(r"denied\s+\d+\s+denied\.test", net.stdout), net.stdout


def test_a_run_that_fails_after_a_refusal_says_what_to_allow(
    outside: Outside, home: Path, tmp_path: Path
) -> None:
    project = project_with_probe(tmp_path, outside.world)
    write_config(home, {"blocked": {"directory": str(project),
                                    "network": {"egress": "allowlist"},
                                    "allow_hosts": ["allowed.test"]}})
    task = "[[bash: python3 /workspace/probe.py get https://denied.test/; sleep 600]]"
    code, result = run_json(home, "blocked", task, "--timeout", "20")
    assert code == 3 and result["exit_reason"] == "timeout", result
    assert "denied egress to denied.test" in result["hint"], result
    assert result["denied_hosts"] == ["denied.test"], result


def test_learn_records_every_host_and_suggest_prints_an_allowlist(
    outside: Outside, home: Path, tmp_path: Path
) -> None:
    project = project_with_probe(tmp_path, outside.world)
    write_config(home, {"learner": {"directory": str(project), "network": {"egress": "learn"}}})
    code, result = run_json(home, "learner", probe("get", "https://allowed.test/",
                                                   "get", "http://denied.test/"))
    assert code == 0, result
    seen = lines_of(result)
    assert seen["GET https://allowed.test/"].startswith("OK 200"), seen
    assert seen["GET http://denied.test/"].startswith("OK 200"), seen
    assert result["denied_hosts"] == [], result
    suggested = run_cli(home, "egress", "suggest", "learner")
    assert suggested.returncode == 0, suggested.stderr
    block = yaml.safe_load(suggested.stdout)
    assert block["agents"]["learner"] == {"network": {"egress": "allowlist"},
                                          "allow_hosts": ["allowed.test", "denied.test"]}


def test_allow_hosts_changes_apply_to_the_next_run_without_a_restart(
    outside: Outside, home: Path, tmp_path: Path
) -> None:
    project = project_with_probe(tmp_path, outside.world)
    agent = {"directory": str(project), "network": {"egress": "allowlist"},
             "allow_hosts": ["allowed.test"]}
    write_config(home, {"edited": agent})
    before = proxy_ids(outside.client)
    code, result = run_json(home, "edited", probe("get", "https://denied.test/"))
    assert code == 0 and "403" in lines_of(result)["GET https://denied.test/"], result
    write_config(home, {"edited": {**agent, "allow_hosts": ["allowed.test", "denied.test"]}})
    code, result = run_json(home, "edited", probe("get", "https://denied.test/"))
    assert code == 0, result
    assert lines_of(result)["GET https://denied.test/"] == "OK 200 denied.test https", result
    assert proxy_ids(outside.client) == before  # the same proxy container throughout


def test_a_run_without_egress_still_reaches_nothing(
    outside: Outside, home: Path, tmp_path: Path
) -> None:
    project = project_with_probe(tmp_path, outside.world)
    write_config(home, {"closed": {"directory": str(project)}})
    task = ("[[bash: echo PROXYVARS=$(env | grep -ci _proxy); python3 /workspace/probe.py "
            f"direct {outside.world.address('allowed.test')} 80]]")
    code, result = run_json(home, "closed", task)
    assert code == 0, result
    assert "PROXYVARS=0" in result["result"], result
    assert "-> SHUT" in result["result"], result
