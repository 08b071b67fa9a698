"""Who is calling the gateway (run tokens) and what it calls the model API with (the credential).

A run token is the only secret a container holds: it names the run, its root, agent, depth
and caller, and the orchestrator derives every limit from it, never from what the container
says. The real credential stays in this process; its ``repr`` never shows the value.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.config import EnvSource, FileSource
from orchestrator.errors import ConfigError

TOKEN_PREFIX = "ads-run-"
OAUTH_PREFIX = "sk-ant-oat"
_OAUTH_ENV_NAMES = frozenset({"CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"})


@dataclass(frozen=True)
class TokenInfo:
    """What a live run token stands for."""

    run_id: str
    root_id: str
    agent: str
    depth: int
    caller: str
    budget_usd: float | None = None
    """The run's own cap when its request lowered it (the config's caps still apply)."""
    root_budget_usd: float | None = None
    """Its tree's cap when its request lowered it below ``settings.budget.per_root``."""
    server_tools: frozenset[str] = frozenset()
    """What its agent's ``server_tools`` allowed when the token was issued (see
    :mod:`orchestrator.gateway.capabilities`)."""


def token_digest(token: str) -> str:
    """What a run record keeps of a token: enough to honour it again, not to forge it."""
    return _digest(token)


def _digest(token: str) -> str:
    # Keyed by digest so a lookup's timing says nothing about how much of a guess matched.
    return hashlib.sha256(token.encode()).hexdigest()


class RunTokens:
    """The live run tokens of this process. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, TokenInfo] = {}

    def issue(self, info: TokenInfo) -> str:
        """A fresh random token for ``info``; live until revoked."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._live[_digest(token)] = info
        return token

    def restore(self, digest: str, info: TokenInfo) -> None:
        """Honour again a token issued by a process that died (by its digest)."""
        with self._lock:
            self._live[digest] = info

    def revoke_digest(self, digest: str) -> None:
        with self._lock:
            self._live.pop(digest, None)

    def revoke(self, token: str) -> None:
        """End ``token``; unknown tokens are ignored."""
        with self._lock:
            self._live.pop(_digest(token), None)

    def revoke_run(self, run_id: str) -> None:
        """End every token issued for ``run_id``."""
        with self._lock:
            for key in [k for k, info in self._live.items() if info.run_id == run_id]:
                del self._live[key]

    def lookup(self, token: str) -> TokenInfo | None:
        """The info of a live token, or None (never issued, or revoked)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._lock:
            return self._live.get(_digest(token))

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)


@dataclass(frozen=True)
class Credential:
    """The real model API credential. ``repr`` and ``str`` never show the value."""

    value: str = field(repr=False)
    kind: Literal["api_key", "oauth"]

    def __str__(self) -> str:
        return repr(self)


def resolve_credential(
    source: EnvSource | FileSource | None, env_name_hint: str = "ANTHROPIC_API_KEY"
) -> Credential | None:
    """Read the credential ``source`` names; None when there is no source (the stub).

    An OAuth token (from ``CLAUDE_CODE_OAUTH_TOKEN``/``ANTHROPIC_AUTH_TOKEN``, or any value
    starting ``sk-ant-oat``) is sent as a Bearer token, anything else as ``x-api-key``.
    Raises :class:`ConfigError` when the variable is unset or the file unreadable or empty;
    ``env_name_hint`` is the variable the hint suggests setting.
    """
    if source is None:
        return None
    hint = (
        f"Export {env_name_hint} in the orchestrator's environment, point "
        "settings.model_api.credential at a file ({file: PATH}), or use upstream: stub."
    )
    if isinstance(source, EnvSource):
        value = os.environ.get(source.env, "").strip()
        where = f"environment variable {source.env}"
        oauth_name = source.env in _OAUTH_ENV_NAMES
    else:
        path = Path(source.file).expanduser()
        where = f"file {path}"
        oauth_name = False
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"model API credential: cannot read {where} ({exc.strerror or exc})",
                hint=hint,
                source=str(path),
            ) from exc
    if not value:
        raise ConfigError(
            f"model API credential: {where} is unset or empty", hint=hint, source=where
        )
    kind: Literal["api_key", "oauth"] = (
        "oauth" if oauth_name or value.startswith(OAUTH_PREFIX) else "api_key"
    )
    return Credential(value=value, kind=kind)
