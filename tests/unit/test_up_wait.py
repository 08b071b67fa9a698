"""`up --wait`: the service fills an agent's warm pool and fails with the reason when it cannot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.config import Pool
from orchestrator.configfile import load_config, save_config
from orchestrator.errors import ContainerFailed
from tests.servicekit import Kit, open_kit, use_home

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kit]:
    use_home(tmp_path, monkeypatch)
    config = load_config(tmp_path / "agents.yaml")
    settings = config.settings.model_copy(update={"pool": Pool(warm_per_agent=2)})
    save_config(config.model_copy(update={"settings": settings}), tmp_path / "agents.yaml")
    async with open_kit() as started:
        yield started


async def test_wait_returns_with_the_pool_full_and_running(kit: Kit) -> None:
    made = await kit.service.fill_pool("alpha", wait=True)
    assert len(made) == 2
    assert all(kit.runtime.inspect(c).running for c in made)  # type: ignore[union-attr]
    assert await kit.service.fill_pool("alpha", wait=True) == []  # already full


async def test_wait_fails_with_the_reason(kit: Kit) -> None:
    kit.runtime.fail_next["create"] = ContainerFailed("container x did not start: no image")
    with pytest.raises(ContainerFailed, match="did not start: no image"):
        await kit.service.fill_pool("alpha", wait=True)


async def test_without_wait_a_failure_is_only_logged(kit: Kit) -> None:
    kit.runtime.fail_next["create"] = ContainerFailed("container x did not start: no image")
    assert await kit.service.fill_pool("alpha") == []


async def test_wait_fails_when_a_warm_container_stopped(kit: Kit) -> None:
    made = await kit.service.fill_pool("alpha", wait=True)
    kit.runtime.kill(made[0])
    with pytest.raises(ContainerFailed, match="of agent 'alpha' is"):
        await kit.service.fill_pool("alpha", wait=True)
