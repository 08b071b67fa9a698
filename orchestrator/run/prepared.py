"""A run's inputs, looked up once: the check before a run and the run itself use one value.

Looking the agent, its secrets and its directory's owner up again at execution would let a
config edit between the check and the run give the run settings nobody checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import Agent, Config
from orchestrator.models import RunRequest
from orchestrator.run.dirpin import PinStore
from orchestrator.run.sandbox import Owner, agent_image, directory_owner, read_secrets


@dataclass(frozen=True)
class Prepared:
    """Everything about one request that is known before a container exists."""

    config: Config
    """The config snapshot the run was checked against; the run sees no other."""
    agent: Agent
    owner: Owner
    secrets: dict[str, bytes] = field(repr=False)  # never in a log line or a traceback
    image: str
    timeout: float
    budget_usd: float
    """The run's money limit: ``settings.budget.per_run``, lowered by the agent's own and the
    request's ``max_budget_usd``."""


def run_timeout(config: Config, agent: Agent, request: RunRequest) -> float:
    return request.timeout or agent.timeout or config.settings.default_timeout


def run_budget(config: Config, agent: Agent, request: RunRequest | None = None) -> float:
    limit = config.settings.budget.per_run
    if agent.max_budget_usd is not None:
        limit = min(limit, agent.max_budget_usd)
    if request is not None and request.max_budget_usd is not None:
        limit = min(limit, request.max_budget_usd)
    return limit


def prepare(config: Config, request: RunRequest, pins: PinStore | None) -> Prepared:
    """Look ``request``'s agent up in ``config``; raises what is wrong before any container
    (unknown agent, a moved or swapped directory, a secret whose source is missing)."""
    agent = config.agent(request.agent)
    return Prepared(
        config=config,
        agent=agent,
        owner=directory_owner(request.agent, agent, pins),
        secrets=read_secrets(request.agent, agent),
        image=agent_image(config, agent),
        timeout=run_timeout(config, agent, request),
        budget_usd=run_budget(config, agent, request),
    )
