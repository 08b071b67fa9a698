"""The throwaway world of one benchmark run: a project, one config per server variant, the
`ad-sandbox serve` processes behind real MCP clients, the bare host `claude -p` baseline, and
the Docker checks and clean-up. Everything lives under one temp dir and one name tag.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Any

import anyio
import docker
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from orchestrator.run.sandbox import LABEL_AGENT, LABEL_MANAGED

AD_SANDBOX = str(Path(sys.executable).with_name("ad-sandbox"))
DEADLINE_S = 120.0
"""No single benchmark step may take longer than this; a hang is a failure, not a number."""
POLL_S = 0.05


class BenchError(RuntimeError):
    """A step did not do what it must (a wrong answer, a leftover container, a hang)."""


class Workspace:
    """Temp dir, a small project all agents share, and per-variant configs and state dirs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = "bench" + uuid.uuid4().hex[:6]
        self.project = root / "project"
        self.project.mkdir()
        (self.project / "CLAUDE.md").write_text("# bench\nA tiny project for the benchmark.\n")
        self.home = root / "home"
        self.home.mkdir()
        self.agents: list[str] = []

    def agent(self, variant: str) -> str:
        return f"{self.tag}-{variant}"

    def server_env(self, variant: str, *, warm: int, cache: bool, max_concurrency: int = 4,
                   runtime: str = "runc") -> dict[str, str]:
        """Environment for an `ad-sandbox serve` of one variant: its own config and state;
        its agent runs under ``runtime`` (``runsc``: gVisor)."""
        folder = self.root / variant
        folder.mkdir(exist_ok=True)
        name = self.agent(variant)
        if name not in self.agents:
            self.agents.append(name)
        config = {
            "settings": {
                "model_api": {"upstream": "stub", "credential": None},
                "pool": {"warm_per_agent": warm},
                "cache": {"enabled": cache, "ttl": 3600},
                "max_concurrency": max_concurrency,
                "default_timeout": 120,
            },
            "agents": {name: {"directory": str(self.project),
                              "description": f"benchmark agent ({variant})",
                              "sandbox": {"runtime": runtime}}},
        }
        (folder / "agents.yaml").write_text(json.dumps(config, indent=1))
        return {**os.environ, "HOME": str(self.home),
                "AD_SANDBOX_CONFIG": str(folder / "agents.yaml"),
                "AD_SANDBOX_STATE_DIR": str(folder / "state")}

    def log_file(self, variant: str) -> Path:
        return self.root / variant / "serve.log"


# --- MCP ------------------------------------------------------------------------------


@asynccontextmanager
async def serve(env: dict[str, str], log: Path) -> AsyncIterator[Client]:
    """A real MCP client on a real `ad-sandbox serve` over stdio; its stderr goes to ``log``."""
    params = StdioServerParameters(command=AD_SANDBOX, args=["serve"], env=env)
    with log.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


def body(result: Any, *, allow_error: bool = False) -> dict[str, Any]:
    """A tool's answer as a dict; a tool error raises unless ``allow_error`` (a failed run's
    result still carries its structured answer)."""
    if result.is_error and not (allow_error and result.structured_content is not None):
        raise BenchError(f"tool error: {result.content[0].text if result.content else result}")
    if result.structured_content is not None:
        return dict(result.structured_content)
    return dict(json.loads(result.content[0].text))


async def call(client: Client, tool: str, args: dict[str, Any], *,
               allow_error: bool = False) -> dict[str, Any]:
    with anyio.fail_after(DEADLINE_S):
        return body(await client.call_tool(tool, args), allow_error=allow_error)


async def wait_warm(client: Client, agent: str, want: int = 1) -> float:
    """Poll sandbox_status until ``agent`` has ``want`` warm containers; returns seconds waited."""
    started = time.perf_counter()
    with anyio.fail_after(DEADLINE_S):
        while True:
            status = await call(client, "sandbox_status", {})
            warm = {p["agent"]: p["warm"] for p in status["pool"]}
            if warm.get(agent, 0) >= want:
                return time.perf_counter() - started
            await anyio.sleep(POLL_S)


def check_answer(answer: dict[str, Any], expected: str) -> None:
    if not answer.get("success") or answer.get("result") != expected:
        raise BenchError(f"expected a successful {expected!r}, got {answer}")


# --- bare host claude -----------------------------------------------------------------


def host_env(binary: Path, base_url: str, ws: Workspace) -> dict[str, str]:
    """The environment of a bare host `claude -p` against the stub (the peer's children get
    the same): throwaway HOME and config dir, no non-essential traffic, no retries."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(ws.home),
        "CLAUDE_CONFIG_DIR": str(ws.root / "host-claude-config"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "bench-not-a-real-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


def host_claude(binary: Path, base_url: str, ws: Workspace, prompt: str, expected: str,
                one_core: bool = False) -> float:
    """One bare `claude -p` on the host against the stub; returns wall ms (spawn to exit).

    ``one_core`` pins it to one CPU (taskset), close to an agent container's ``cpus: 1``.
    """
    env = host_env(binary, base_url, ws)
    argv = [str(binary), "-p", "--output-format", "json"]
    if one_core:
        argv = ["taskset", "--cpu-list", "0", *argv]
    started = time.perf_counter()
    done = subprocess.run(argv, input=prompt.encode(),
                          cwd=ws.project, env=env, capture_output=True, timeout=DEADLINE_S)
    elapsed = (time.perf_counter() - started) * 1000
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise BenchError(f"host claude printed no JSON (exit {done.returncode}): "
                         f"{done.stderr.decode(errors='replace')[-500:]}") from None
    if done.returncode != 0 or answer.get("is_error") or answer.get("result") != expected:
        raise BenchError(f"host claude: expected {expected!r}, got {answer}")
    return elapsed


# --- process start ----------------------------------------------------------------------


def _read_line(stream: IO[bytes], deadline: float) -> bytes:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise BenchError("no answer before the deadline")
    return stream.readline()


def serve_to_initialize(env: dict[str, str], log: Path,
                        argv: tuple[str, ...] = (AD_SANDBOX, "serve")) -> float:
    """Spawn an MCP stdio server (`ad-sandbox serve` unless ``argv`` names another), send
    `initialize`; ms until its answer arrives. Then stop it."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}
    with log.open("a") as errlog:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errlog)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = _read_line(proc.stdout, time.monotonic() + DEADLINE_S)
            elapsed = (time.perf_counter() - started) * 1000
            if json.loads(line).get("id") != 1:
                raise BenchError(f"unexpected first message: {line[:300]!r}")
        finally:
            proc.stdin.close()  # end of input: serve shuts down
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return elapsed


def python_import_mcp(python: str = sys.executable) -> float:
    """Reference: an interpreter (this one unless named) starting and importing `mcp`, in ms."""
    started = time.perf_counter()
    subprocess.run([python, "-c", "import mcp"], check=True, timeout=DEADLINE_S)
    return (time.perf_counter() - started) * 1000


# --- memory -------------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (every thread's), from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            found.update(int(c) for c in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        kids = children(todo.pop()) - found
        found |= kids
        todo.extend(kids)
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 once it is gone)."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """(own RSS, RSS of the process and all its descendants), KiB. Shared pages count once
    per process, so the second is an upper bound."""
    own = rss_kib(pid)
    return own, own + sum(rss_kib(c) for c in descendants(pid))


# --- Docker -------------------------------------------------------------------------------


class Engine:
    """The few Docker queries the benchmark makes, limited to its own agents."""

    def __init__(self) -> None:
        self.client = docker.from_env()

    def containers(self, agent: str) -> list[Any]:
        """The agent's containers, inspected (``attrs`` has ``HostConfig.Runtime``); one
        removed while they are listed is left out."""
        return list(self.client.containers.list(
            all=True, filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_AGENT}={agent}"]},
            ignore_removed=True))

    def runtimes(self) -> dict[str, Any]:
        """The OCI runtimes the engine knows (``docker info`` → ``Runtimes``)."""
        return dict(self.client.info().get("Runtimes") or {})

    def managed(self) -> list[Any]:
        """Every ad-sandbox container on the engine (other users' too)."""
        return list(self.client.containers.list(all=True,
                                                filters={"label": f"{LABEL_MANAGED}=1"}))

    def cleanup(self, agents: list[str]) -> list[str]:
        """Remove whatever the benchmark's agents left (containers, session volumes), found by
        their labels; the agents' names are unique to this run."""
        removed: list[str] = []
        for agent in agents:
            for container in self.containers(agent):
                container.remove(force=True, v=True)
                removed.append(container.name)
            for volume in self.client.volumes.list(
                    filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_AGENT}={agent}"]}):
                with suppress(docker.errors.NotFound):
                    volume.remove(force=True)
        return removed

    def close(self) -> None:
        self.client.close()
