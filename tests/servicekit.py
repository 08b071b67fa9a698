"""The real dispatch :class:`~orchestrator.dispatch.Service` over the in-memory FakeRuntime.

Fast tests of the service, the fan-out, the catalog and the MCP server drive the one service
every face calls: the real gateway, relay, stub model, state store and records, with only the
container simulated (``tests/fake_claude.py`` plays ``claude``). Every construction of the
service for tests is here, so a change to how it is built is adapted in one place.

The home it writes: agents ``alpha`` and ``beta`` (projects under ``projects/``, each with a
three-line CLAUDE.md), a group ``team`` of both, ``projects/`` as the one allowed root, the
stub model, no warm pool. Steer a run with the stub's directives in the task
(``[[reply: TEXT]]``, ``[[status: 429]]``, ...), or make it run until cancelled with
:data:`BLOCK` (a ``claude`` that waits to be killed without a request open to the gateway,
whose stop would otherwise wait for it).
"""

from __future__ import annotations

import json
import queue
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.config import (
    Agent,
    Budget,
    Config,
    Group,
    GroupMember,
    ModelApi,
    Pool,
    Settings,
)
from orchestrator.configfile import save_config
from orchestrator.dispatch import DispatchService, Service, open_service
from orchestrator.paths import CONFIG_ENV, STATE_ENV
from orchestrator.runtime.fake import FakeExec, FakeRuntime
from orchestrator.state import StateStore
from tests.fake_claude import fake_claude, prompt_of

AGENTS = ("alpha", "beta")
PREVIEW = "line 0\nline 1\nline 2\n"
DEADLINE = 10.0
BLOCK = "(servicekit: block until cancelled)"
"""A task containing this runs until its container is killed."""
BLOCK_LIMIT_S = 120.0
"""How long a blocked ``claude`` waits at most, so a broken test cannot hang forever."""


def write_home(root: Path, *, management: bool = True, **settings: Any) -> dict[str, str]:
    """Write the config and projects under ``root``; the environment that points at them."""
    projects = root / "projects"
    agents = {}
    for name in AGENTS:
        folder = projects / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "CLAUDE.md").write_text(PREVIEW)
        agents[name] = Agent(directory=str(folder), description=f"{name} agent")
    settings.setdefault("budget", Budget(per_run=1.0, per_root=5.0, daily=49.5))
    config = Config(
        settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                          pool=Pool(warm_per_agent=0), allowed_roots=[str(projects)],
                          agent_management_tools=management, **settings),
        agents=agents,
        groups={"team": Group(description="both", shared_context="shared", members=[
            GroupMember(agent="alpha", use_for="a"), GroupMember(agent="beta")])},
    )
    save_config(config, root / "agents.yaml")
    return {CONFIG_ENV: str(root / "agents.yaml"), STATE_ENV: str(root / "state")}


@dataclass
class Kit:
    """A started service and what the tests look through: its runtime and store."""

    service: Service
    runtime: FakeRuntime
    started: queue.Queue[str] = field(default_factory=queue.Queue)
    """Container ids whose ``claude`` began, in order."""

    @property
    def state(self) -> StateStore:
        return self.service.state

    def execs(self) -> list[Any]:
        """Every ``claude`` the runs started (the runtime's exec calls)."""
        return [call for call in self.runtime.calls if call[0] == "exec"]

    async def idle(self) -> None:
        """Return once no run is in flight, its bookkeeping (cache entry, container
        removal) included: a run's result reaches its caller before that is done."""
        await self.service.dispatcher.idle()

    async def next_run(self) -> str:
        """The run id of the next unfinished run whose ``claude`` has begun (runs that
        already ended are skipped)."""
        with anyio.fail_after(DEADLINE):
            while True:
                container_id = await anyio.to_thread.run_sync(
                    lambda: self.started.get(timeout=DEADLINE))
                for record in self.state.unfinished_runs():
                    if record.container_id == container_id:
                        return record.run_id


def fake_runtime(started: queue.Queue[str]) -> FakeRuntime:
    """A FakeRuntime whose ``claude`` is tests/fake_claude.py, telling ``started`` it began."""

    def claude(proc: FakeExec) -> int | None:
        started.put(proc.container_id)
        if BLOCK not in prompt_of(proc):
            return fake_claude(proc)
        proc.out(json.dumps({"type": "system", "subtype": "init", "session_id": "blocked"}))
        proc.wait_ended(BLOCK_LIMIT_S)
        return None

    runtime = FakeRuntime()
    runtime.on_command("bash", claude)
    return runtime


@asynccontextmanager
async def open_kit(*, wait_for_runs: bool = True) -> AsyncIterator[Kit]:
    """The real service over a fresh FakeRuntime, for the home the environment names
    (:func:`write_home`). Runs in flight at the end are cancelled first, so a test that
    leaves a :data:`BLOCK` run behind (or the engine stopped) still ends at once."""
    started: queue.Queue[str] = queue.Queue()
    runtime = fake_runtime(started)
    async with open_service(warm=False, reattach=False, wait_for_runs=wait_for_runs,
                            runtime=runtime, gateway_host="127.0.0.1",
                            image_id=lambda ref: "sha256:fake") as service:
        kit = Kit(service, runtime, started)
        try:
            yield kit
        finally:
            runtime.available = True  # a test may have stopped the engine; the end needs it
            with anyio.CancelScope(shield=True):
                for record in kit.state.unfinished_runs():
                    await service.cancel(record.run_id)


def kit_factory(kits: list[Kit] | None = None,
                ) -> Callable[[], AbstractAsyncContextManager[DispatchService]]:
    """A service factory for ``create_server``: each server run opens a kit (appended to
    ``kits`` when given, so a test can look at its runtime and store)."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[DispatchService]:
        async with open_kit() as kit:
            if kits is not None:
                kits.append(kit)
            yield kit.service

    return factory


def use_home(root: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Path:
    """:func:`write_home` under ``root`` and point this test's environment at it."""
    for name, value in write_home(root, **settings).items():
        monkeypatch.setenv(name, value)
    return root
