"""Issue 10: the egress proxy dies mid-run, comes back for the next run, and `down` removes it.

Its own module (and world): `down` removes the egress network only once nothing else is
attached to it, so no other module's world may be alive here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from orchestrator.run.egress import EGRESS_NETWORK, LABEL_ROLE, PROXY_VOLUME, ROLE
from orchestrator.run.sandbox import AGENTS_NETWORK, LABEL_MANAGED
from tests.docker.egress_world import EgressWorld
from tests.docker.support import AD_SANDBOX, cli_env, run_cli, run_json, wait_for, write_config
from tests.security.test_egress import PROBE, lines_of, probe, proxy_ids

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MANAGED = f"{LABEL_MANAGED}=1"


def test_a_dead_proxy_fails_the_next_request_clearly_and_is_back_for_the_next_run(
    home: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    project.chmod(0o777)  # root's project runs as 65532, which writes the markers here
    shutil.copy(PROBE, project / "probe.py")
    write_config(home, {"fragile": {"directory": str(project), "network": {"egress": "open"}}})
    up = run_cli(home, "up", timeout=600)
    assert up.returncode == 0, up.stderr
    with EgressWorld(client, EGRESS_NETWORK, names=("site.test",)) as world:
        shutil.copy(world.ca_pem, project / "ca.pem")
        task = probe("get", "https://site.test/", "mark", "/workspace/first-done",
                     "wait", "/workspace/go", "get", "https://site.test/")
        running = subprocess.Popen(
            [AD_SANDBOX, "run", "fragile", "--json", "--", task], env=cli_env(home),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            wait_for((project / "first-done").exists, 120, "the run's first request")
            (old,) = proxy_ids(client)
            client.containers.get(old).kill()
            (project / "go").write_text("x")
            stdout, stderr = running.communicate(timeout=120)
        finally:
            if running.poll() is None:
                running.kill()
                running.communicate()
        result = json.loads(stdout)
        seen = lines_of(result)
        # The first request went through; the one after the kill failed (the error is the
        # client's: refused, or no route to the proxy's address).
        assert result["result"].count("OK 200 site.test https") == 1, result
        assert seen["GET https://site.test/"].startswith("ERR URLError"), (seen, stderr)
        net = run_cli(home, "logs", result["run_id"], "--net")
        assert "the proxy was lost during the run" in net.stdout, net.stdout
        code, again = run_json(home, "fragile", probe("get", "https://site.test/"))
        assert code == 0, again
        assert lines_of(again)["GET https://site.test/"] == "OK 200 site.test https", again
        assert proxy_ids(client) and proxy_ids(client) != [old]
    others = [c.name for c in client.containers.list(all=True, filters={"label": MANAGED})
              if c.labels.get(LABEL_ROLE) != ROLE]
    down = run_cli(home, "down", "--volumes")
    assert down.returncode == 0, down.stderr
    proxies = client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}={ROLE}"})
    networks = {n.name for n in client.networks.list()}
    if others:  # another config's agents (a concurrent session): the shared objects stay
        assert "kept network ad-sandbox-egress (other configs' containers use it)" in \
            down.stdout, (others, down.stdout)
        assert proxies and EGRESS_NETWORK in networks, others
        return
    assert "removed container ad-sandbox-proxy" in down.stdout, down.stdout
    assert proxies == [], proxies
    assert EGRESS_NETWORK not in networks and AGENTS_NETWORK not in networks, down.stdout
    assert PROXY_VOLUME not in {v.name for v in client.volumes.list()}, down.stdout
