"""The result cache's key (SPEC §6): the request, the agent, its image and its project state.

Storage and TTL are in the shared state store; this module decides what makes two requests
the same, so a commit or an uncommitted edit in the agent's project is a miss.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from orchestrator.config import Agent
from orchestrator.models import RunRequest

GIT_TIMEOUT_S = 10


def project_state(directory: Path) -> str:
    """``git HEAD`` plus a hash of ``git status --porcelain``; ``"no-git"`` outside git.

    Run on the host (the orchestrator's side), read-only, ``safe.directory`` widened so a
    project owned by another user still answers.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-c", "safe.directory=*", "-C", str(directory), *args],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return "no-git"
    status = git("status", "--porcelain", "--untracked-files=all") or ""
    return f"{head.strip()}:{hashlib.sha256(status.encode()).hexdigest()[:16]}"


def cache_key(request: RunRequest, agent: Agent, image_id: str, project: str) -> str:
    payload = {
        "agent": request.agent,
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
