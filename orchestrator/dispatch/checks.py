"""What is checked of a request before anything runs: its text, its limits, its agent.

The answer is one :class:`~orchestrator.run.prepared.Prepared` value the run then uses, so
the check and the run cannot see different configs.
"""

from __future__ import annotations

from orchestrator.config import Agent, Config
from orchestrator.errors import AgentNotFound, RecursionLimit, UsageError
from orchestrator.models import RunRequest
from orchestrator.run.dirpin import PinStore
from orchestrator.run.prepared import Prepared, prepare

MAX_PROMPT_CHARS = 400_000
"""Task + context + goal. Beyond this the model's context window is the wrong channel."""


def validate(config: Config, request: RunRequest) -> Agent:
    """Reject bad input before anything runs; returns the request's agent."""
    agent = config.agent(request.agent)
    if not request.task.strip():
        raise UsageError("the task is empty", hint="Say what the agent should do.")
    size = len(request.task) + len(request.context) + len(request.goal)
    if size > MAX_PROMPT_CHARS:
        raise UsageError(
            f"task, context and goal are {size:,} characters; the limit is "
            f"{MAX_PROMPT_CHARS:,}",
            hint="Put large material in a file in the agent's project and name the file.",
        )
    if request.timeout is not None and request.timeout <= 0:
        raise UsageError(f"timeout must be positive, got {request.timeout}")
    if request.group is not None and request.group not in config.groups:
        known = ", ".join(sorted(config.groups)) or "none defined"
        raise AgentNotFound(f"unknown group {request.group!r} (known: {known})",
                            hint="Call list_groups, or leave group empty.")
    limit = config.settings.max_dispatch_depth
    if request.depth > limit:
        raise RecursionLimit(f"dispatch depth {request.depth} exceeds the limit {limit}")
    return agent


def check_request(config: Config, request: RunRequest, pins: PinStore | None) -> Prepared:
    """Everything that can be known wrong before a container exists, against ``config``;
    the agent's directory owner and secrets are read here, once per run."""
    validate(config, request)
    return prepare(config, request, pins)
