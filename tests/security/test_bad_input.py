"""Issue 7 item 10: hostile or malformed input is refused fast and clearly, never a hang,
a traceback or an unbounded file.

* a YAML alias bomb ("billion laughs") in the agents file;
* a task that is not valid UTF-8, in argv or on stdin;
* an agent or group name with a trailing newline;
* an agent flooding its output stream (run logs are capped).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import anyio
import docker
import pytest
import yaml
from mcp import Client, StdioServerParameters

from orchestrator.configfile import ConfigSnapshot
from tests.docker.support import AD_SANDBOX, agent_containers, cli_env, run_cli, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAST_S = 5.0
"""A refused config must be refused this fast (the bomb used to take minutes)."""
CLI_START_S = 10.0
"""Margin for starting the CLI process on a loaded two-core machine."""


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The classic billion-laughs shape: each anchor lists the previous one ``width`` times."""
    lines = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"  - &l{level} [{refs}]")
    return "\n".join(lines)


def _write_bomb(home: Path, project: Path, agent: str) -> Path:
    path = home / "agents.yaml"
    path.write_text(
        "settings:\n"
        "  model_api: {upstream: stub, credential: null}\n"
        "  pool: {warm_per_agent: 0}\n"
        "x-bomb:\n" + _bomb() + "\n"
        "agents:\n"
        f"  {agent}:\n"
        f"    directory: {project}\n"
        f"    allowed_tools: *l8\n"
    )
    return path


def _timed_cli(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    try:
        done = run_cli(home, *args, timeout=FAST_S + CLI_START_S + 20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`ad-sandbox {' '.join(args)}` hung on the alias bomb")
    return time.monotonic() - started, done


def _no_runs(home: Path) -> None:
    done = run_cli(home, "jobs", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [], "a run was recorded for refused input"


# ---- alias bomb ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("list",), ("run", "bomb-agent", "hello")])
def test_alias_bomb_is_refused_fast_by_the_cli(home: Path, project: Path,
                                                command: tuple[str, ...]) -> None:
    _write_bomb(home, project, "bomb-agent")
    elapsed, done = _timed_cli(home, *command)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert "agents.yaml line" in done.stderr and "alias" in done.stderr, done.stderr
    assert elapsed < FAST_S + CLI_START_S, f"took {elapsed:.1f}s"


def test_alias_bomb_reload_keeps_the_last_good_config(home: Path, project: Path) -> None:
    """What `serve` does on each request: re-read on change, keep the last good config."""
    path = write_config(home, {"good": {"directory": str(project)}})
    snapshot = ConfigSnapshot(path)
    assert set(snapshot.get().agents) == {"good"}
    _write_bomb(home, project, "bomb-agent")
    started = time.monotonic()
    config = snapshot.get()
    elapsed = time.monotonic() - started
    assert set(config.agents) == {"good"}
    assert snapshot.warning is not None and "alias" in snapshot.warning, snapshot.warning
    assert elapsed < FAST_S, f"reload took {elapsed:.1f}s"


def test_served_alias_bomb_reload_keeps_answering(home: Path, project: Path) -> None:
    """A real `serve` over stdio: after the bomb lands, `list_agents` still answers, fast,
    with the last good agents."""
    path = write_config(home, {"good": {"directory": str(project)}})

    async def names(client: Client) -> list[str]:
        result = await client.call_tool("list_agents", {})
        data = result.structured_content
        assert data is not None, result
        return [agent["name"] for agent in data["agents"]]

    async def main() -> tuple[list[str], list[str], float]:
        params = StdioServerParameters(command=AD_SANDBOX, args=["serve"], env=cli_env(home))
        with anyio.fail_after(120):
            async with Client(params) as client:
                first = await names(client)
                _write_bomb(home, project, "bomb-agent")
                started = time.monotonic()
                second = await names(client)
                return first, second, time.monotonic() - started

    first, second, elapsed = anyio.run(main)
    assert "*l8" in path.read_text()
    assert first == ["good"] and second == ["good"], (first, second)
    assert elapsed < FAST_S, f"list_agents after the bomb took {elapsed:.1f}s"


# ---- invalid UTF-8 in the task ------------------------------------------------------------


def test_invalid_utf8_task_in_argv_is_a_usage_error(home: Path, project: Path,
                                                     client: docker.DockerClient) -> None:
    write_config(home, {"utf-argv": {"directory": str(project)}})
    # A str with surrogate escapes becomes the raw bytes 0xff 0xfe in the child's argv.
    done = run_cli(home, "run", "utf-argv", "fix the \udcff\udcfe bug")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert "UTF-8" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    _no_runs(home)
    assert agent_containers(client, "utf-argv") == []


def test_invalid_utf8_task_on_stdin_is_a_usage_error(home: Path, project: Path,
                                                      client: docker.DockerClient) -> None:
    write_config(home, {"utf-stdin": {"directory": str(project)}})
    done = subprocess.run([AD_SANDBOX, "run", "utf-stdin", "-"], env=cli_env(home),
                          input=b"fix the \xff\xfe bug\n", capture_output=True, timeout=120,
                          check=False)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, (done.returncode, stderr)
    assert "Traceback" not in stderr
    assert "UTF-8" in stderr and "stdin" in stderr, stderr
    _no_runs(home)
    assert agent_containers(client, "utf-stdin") == []


# ---- names with a trailing newline --------------------------------------------------------


def test_add_refuses_a_name_with_a_trailing_newline(home: Path, project: Path) -> None:
    write_config(home, {})
    done = run_cli(home, "add", "web\n", str(project))
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "not valid" in done.stderr
    data = yaml.safe_load((home / "agents.yaml").read_text())
    assert not data.get("agents")
    done = run_cli(home, "group", "create", "team\n")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)


def test_hand_written_name_with_a_trailing_newline_is_refused(home: Path, project: Path) -> None:
    write_config(home, {"web\n": {"directory": str(project)}})
    done = run_cli(home, "list")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "agents.yaml line" in done.stderr and "must match" in done.stderr, done.stderr


# ---- output flood -------------------------------------------------------------------------

FLOOD_BYTES = 20_000_000
LOG_CAP = 1_048_576
# The Bash tool keeps only ~30k characters of a command's output, so the flood goes straight
# to claude's own stdout (the stream the host reads): any process of the agent's uid can.
FLOOD = (
    "[[bash: for p in /proc/[0-9]*; do "
    "if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q -- '--output-format stream-json'; "
    "then yes 'flood flood flood flood flood flood flood flood flood flood flood flood' "
    f"| head -c {FLOOD_BYTES} > $p/fd/1; break; fi; done; echo flooded]]"
)


def test_output_flood_leaves_a_capped_log(home: Path, project: Path) -> None:
    write_config(home, {"flooder": {"directory": str(project)}},
                 logs={"max_bytes": LOG_CAP})
    done = run_cli(home, "run", "flooder", "--json", "--", FLOOD, timeout=300)
    assert done.stdout.strip(), done.stderr
    result = json.loads(done.stdout)
    log_path = home / "state" / "logs" / f"{result['run_id']}.log"
    size = log_path.stat().st_size
    assert size <= LOG_CAP + 64 * 1024, f"log is {size:,} bytes for a cap of {LOG_CAP:,}"
    text = log_path.read_text(encoding="utf-8")
    assert "[ad-sandbox: dropped" in text, "no marker where output was dropped"
    assert text.count("flood flood") > 1000, "the flood never reached the stream"
    # The end of the run is still there, and `logs` still shows it.
    assert '"type":"result"' in text.replace(" ", "")
    shown = run_cli(home, "logs", result["run_id"])
    assert shown.returncode == 0, shown.stderr
    assert "[ad-sandbox: dropped" in shown.stdout
    assert '"type":"result"' in shown.stdout.replace(" ", "")
