"""`ad-sandbox run --file` as CI runs it, and every command of examples/github-actions.yml.

Real CLI, real engine and containers, the offline stub model; the tasks steer the stub with
its directives (``[[bash: ...]]`` runs a command in the agent's container).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from junitparser import Failure, JUnitXml

from orchestrator.errors import AdSandboxError
from orchestrator.paths import CONFIG_ENV
from orchestrator.run.sandbox import LABEL_CONFIG, config_identity
from orchestrator.runtime import images

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

BIN = Path(sys.executable).parent
AD_SANDBOX = str(BIN / "ad-sandbox")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STUB = {"upstream": "stub", "credential": None}


@pytest.fixture(scope="module", autouse=True)
def built_images() -> None:
    try:
        images.ensure_images(offline_base=None,
                             progress=lambda line: sys.stderr.write(f"[image] {line}\n"))
    except AdSandboxError as exc:
        pytest.fail(f"could not build the images: {exc.one_line()}", pytrace=False)


def clean_up(config: Path) -> list[str]:
    """Remove what the config's runs left; the names of leftover containers."""
    engine = docker.from_env()
    try:
        scope = {"label": f"{LABEL_CONFIG}={config_identity(config)}"}
        leftovers = engine.containers.list(all=True, filters=scope)
        for container in leftovers:
            container.remove(force=True)
        for volume in engine.volumes.list(filters=scope):
            volume.remove(force=True)
        return [str(c.name) for c in leftovers]
    finally:
        engine.close()


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (CONFIG_ENV, "ANTHROPIC_API_KEY")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
               AD_SANDBOX_STATE_DIR=str(tmp_path / "state"))
    return env


# --- run --file: three tasks, one failing ----------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "README.md").write_text("# pipeline project\n")
    settings = {"model_api": STUB, "pool": {"warm_per_agent": 0}, "default_timeout": 120,
                "max_concurrency": 2}
    config = root / "ad-sandbox.yaml"
    config.write_text(yaml.safe_dump({"settings": settings, "agents": {
        "one": {"directory": "."}, "two": {"directory": ".", "mount": "ro"}}}))
    yield root
    assert not clean_up(config), "containers left behind"


TASKS = [
    {"agent": "one", "task": "[[bash: head -1 /workspace/README.md]]",
     "expect": "pipeline project"},
    {"agent": "two", "task": "[[reply: the answer is 41]]", "expect": r"answer is 42\b"},
    {"agent": "two", "task": "[[bash: echo $((6 * 7))]]", "expect": r"\b42\b", "timeout": 90},
]


def test_three_tasks_one_failing_events_and_junit(project: Path, tmp_path: Path) -> None:
    (project / "tasks.yaml").write_text(yaml.safe_dump(TASKS, sort_keys=False))
    done = subprocess.run(
        [AD_SANDBOX, "run", "--file", "tasks.yaml", "--events", "jsonl",
         "--junit", "report.xml", "--budget", "1.00"],
        cwd=project, env=base_env(tmp_path), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 1, done.stdout + done.stderr  # the worst task: a failed task
    assert "…" not in done.stderr  # no terminal, no progress lines

    events = [json.loads(line) for line in done.stdout.splitlines()]  # JSON per line
    assert events[-1]["event"] == "summary" and events[-1]["failed"] == 1
    for index in range(3):
        own = [e for e in events if e.get("index") == index]
        kinds = [e["event"] for e in own]
        assert kinds[0] == "run_started" and kinds[-1] == "finished", kinds
        assert kinds.count("finished") == 1 and "usage" in kinds, kinds
        times = [e["time"] for e in own]
        assert times == sorted(times)
        assert own[0]["max_budget_usd"] <= 1.00
    finished = {e["index"]: e for e in events if e["event"] == "finished"}
    assert [finished[i]["success"] for i in range(3)] == [True, False, True]
    assert finished[1]["exit_reason"] == "completed" and finished[1]["exit_code"] == 1
    assert any(e["event"] == "tool_call" and e["index"] == 0 for e in events)

    report = JUnitXml.fromfile(str(project / "report.xml"))
    cases = [case for suite in report for case in suite]
    assert len(cases) == 3
    assert cases[0].is_passed and cases[2].is_passed
    failure = cases[1].result[0]
    assert isinstance(failure, Failure)
    assert failure.message.startswith("completed: the answer does not match expect")
    assert "the answer is 41" in (cases[1].system_out or "")
    assert "cost_usd: " in (cases[0].system_out or "")
    assert "tool result: 42" in (cases[2].system_out or "")


# --- the example workflow ------------------------------------------------------------------


SKIPPED = ("pip install", )
"""Steps not run: installing (the package is this checkout's, already installed); the upload
step is a `uses:` action, not a command."""

STUB_TASKS = {
    # The example's tasks with the model-facing text swapped for what the stub does instead;
    # agents, expects and timeouts stay the example's.
    0: "[[bash: head -1 /workspace/README.md]]",
    1: "[[bash: ls -p /workspace]]",
    2: "[[bash: grep -q '^## Unreleased' /workspace/CHANGELOG.md && echo yes]]",
}


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """A repository like this one, with examples/ as the workflow expects it."""
    root = tmp_path / "repo"
    (root / "orchestrator").mkdir(parents=True)
    (root / "README.md").write_text("# ad-sandbox\n")
    (root / "CHANGELOG.md").write_text("# Changelog\n\n## Unreleased\n")
    examples = root / "examples"
    examples.mkdir()
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / "ad-sandbox.yaml").read_text())
    config["settings"]["model_api"] = STUB
    (examples / "ad-sandbox.yaml").write_text(yaml.safe_dump(config))
    tasks: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "tasks.yaml").read_text())
    assert len(tasks) == len(STUB_TASKS)
    for index, task in enumerate(tasks):
        task["task"] = STUB_TASKS[index]
    (examples / "tasks.yaml").write_text(yaml.safe_dump(tasks))
    yield root
    assert not clean_up(examples / "ad-sandbox.yaml"), "containers left behind"


def sudo_shim(directory: Path) -> Path:
    """This suite runs as root: `sudo -E CMD` is CMD here, as it is on the runner."""
    directory.mkdir()
    shim = directory / "sudo"
    shim.write_text('#!/bin/sh\n[ "$1" = -E ] && shift\nexec "$@"\n')
    shim.chmod(0o755)
    return directory


def test_every_command_of_the_example_workflow(checkout: Path, tmp_path: Path) -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    job = workflow["jobs"]["agents"]
    values = {"secrets.ANTHROPIC_API_KEY": "", "runner.temp": str(tmp_path / "runner-temp")}

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)

    env = base_env(tmp_path)
    env.update({name: expand(str(value)) for name, value in job["env"].items()})
    env["PATH"] = f"{sudo_shim(tmp_path / 'shim')}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}"
    cwd = checkout / job["defaults"]["run"]["working-directory"]
    steps = [step for step in job["steps"] if "run" in step]
    assert any("actions/upload-artifact" in step.get("uses", "") for step in job["steps"])
    ran = []
    for step in steps:
        command = expand(step["run"])
        if command.strip().startswith(SKIPPED):
            continue
        done = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0, f"{step['name']}: {command}\n{done.stdout}{done.stderr}"
        ran.append(command)
        if "up --wait" in command:
            assert "ready: 1 agent(s), 1 warm container(s) each" in done.stdout
    assert [c.split("ad-sandbox ", 1)[1] for c in ran] == [
        "up --wait", "run --file tasks.yaml --junit report.xml --budget 1.00", "down --volumes"]
    upload = next(s for s in job["steps"] if "upload-artifact" in s.get("uses", ""))
    report = JUnitXml.fromfile(str(checkout / upload["with"]["path"]))
    cases = [case for suite in report for case in suite]
    assert len(cases) == 3 and all(case.is_passed for case in cases)
    assert shutil.which("ad-sandbox", path=env["PATH"]) == AD_SANDBOX
