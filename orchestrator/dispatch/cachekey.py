"""The result cache's key (SPEC §6): the request, the agent, its image and its project state.

Storage and TTL are in the shared state store; this module decides what makes two requests
the same, so a commit or an uncommitted edit in the agent's project is a miss, and a
project whose state cannot be read safely is not cached at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from orchestrator.config import Agent
from orchestrator.dispatch import projectstate
from orchestrator.errors import RunNotFound
from orchestrator.models import RunRecord, RunRequest
from orchestrator.state import StateStore

log = logging.getLogger(__name__)


def project_state(directory: Path) -> str | None:
    """A digest of the project's git HEAD, index and working tree; ``None`` when unknown.

    Read on the host without running anything or following a symlink (see
    :mod:`orchestrator.dispatch.projectstate`): the project is the agent's, so no ``git`` runs here.
    ``None`` means the request must skip the cache: a constant stand-in would be a stale hit.
    """
    try:
        return projectstate.fingerprint(directory)
    except projectstate.StateUnknown as exc:
        log.info("project state of %s unknown (%s); not using the cache", directory, exc)
        return None


def cache_key(request: RunRequest, agent: Agent, image_id: str, project: str) -> str:
    payload = {
        "agent": request.agent,
        # The directory as resolved: two files may both say ``./proj`` of different repos.
        "directory": str(agent.path),
        "config": agent.model_dump(mode="json"),
        "image": image_id,
        "model": agent.model,
        "task": request.task,
        "context": request.context,
        "goal": request.goal,
        "format": request.response_format,
        "project": project,
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def cacheable(request: RunRequest) -> bool:
    """Resumed sessions continue a conversation; their answer depends on more than the key."""
    return request.session_id is None


FOLLOWED_FIELDS = ("success", "exit_reason", "outcome", "result", "error", "error_type", "hint",
                   "session_id", "num_turns", "denied_tools", "parsed_result", "image",
                   "container_id")


def lookup(state: StateStore, key: str) -> RunRecord | None:
    """The run whose answer is cached under ``key`` (hits and misses are counted)."""
    hit = state.cache_get(key)
    state.cache_note(hit is not None)
    if hit is None:
        return None
    try:
        return state.get_run(hit)
    except RunNotFound:  # its record was collected; the entry is as good as gone
        return None


def answer_from(state: StateStore, record: RunRecord, source: RunRecord) -> RunRecord:
    """End ``record`` with ``source``'s answer at no cost: a cache hit or a coalesced run."""
    fields: dict[str, Any] = {name: getattr(source, name) for name in FOLLOWED_FIELDS}
    now = time.time()
    return state.update_run(
        record.run_id, status="finished", cached=True, cost_usd=0.0, claude_cost_usd=0.0,
        finished_at=now, duration_ms=int((now - record.created_at) * 1000),
        last_action=f"served from run {source.run_id}", **fields)
