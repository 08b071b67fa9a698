"""How an agent becomes a container (SPEC §4): names, labels, mounts, limits, secrets.

Pure logic: it builds a :class:`ContainerSpec`; the runtime creates it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Agent, Config, EnvSource
from orchestrator.errors import ConfigError
from orchestrator.privilege import run_ids
from orchestrator.run.dirpin import PinStore, verify_directory
from orchestrator.runtime.base import ContainerSpec, Mount

AGENTS_NETWORK = "ad-sandbox-agents"
WORKSPACE = "/workspace"
CONFIG_DIR = "/var/lib/ad-sandbox/config"
"""CLAUDE_CONFIG_DIR: a tmpfs of the run, so nothing the agent writes there (settings.json
hooks, statusLine, apiKeyHelper, plugins, user MCP servers in .claude.json) outlives it.
(Not the image's 1777 ``/var/lib/ad-sandbox/claude``: a tmpfs over an existing directory
takes that directory's mode, and this one must be 0700.)"""
SESSIONS_DIR = f"{CONFIG_DIR}/projects"
"""Where claude keeps session transcripts: the per-agent volume, the only part of the config
dir that persists (sessions survive across runs); its root is 0700, owned by the run's uid."""
SECRETS_DIR = "/run/secrets"
RUN_DIR = "/run/ad-sandbox"
"""A tmpfs for the prompt file and the MCP config of the current run."""
HOME_DIR = "/tmp/home"

LABEL_MANAGED = "ad-sandbox.managed"
LABEL_AGENT = "ad-sandbox.agent"
LABEL_RUN = "ad-sandbox.run"
LABEL_OWNER = "ad-sandbox.owner-pid"
LABEL_LEASE = "ad-sandbox.lease-until"
LABEL_CONFIG = "ad-sandbox.config"
"""The identity of the config an object belongs to (:func:`config_identity`)."""

MANAGED = {LABEL_MANAGED: "1"}


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    @property
    def user(self) -> str:
        return f"{self.uid}:{self.gid}"


IDENTITY_CHARS = 12


def config_identity(path: Path) -> str:
    """A short stable id of the config file at ``path``: per-agent engine objects (volume,
    containers, pool, leases) are keyed by it plus the agent, so two configs that both have
    an agent ``x`` never share anything."""
    resolved = str(path.expanduser().resolve())
    return hashlib.sha256(resolved.encode()).hexdigest()[:IDENTITY_CHARS]


def scope_labels(scope: str, agent_name: str) -> dict[str, str]:
    """The labels every per-agent object carries."""
    return {**MANAGED, LABEL_CONFIG: scope, LABEL_AGENT: agent_name}


def _bounded(prefix: str, agent_name: str, limit: int) -> str:
    name = f"{prefix}-{agent_name}"
    if len(name) <= limit:
        return name
    # Distinct long agent names must stay distinct after the cut.
    digest = hashlib.sha256(agent_name.encode()).hexdigest()[:8]
    return f"{prefix}-{agent_name[:limit - len(prefix) - 10]}-{digest}"


def volume_name(scope: str, agent_name: str) -> str:
    """The agent's session volume in config ``scope``; at most 63 characters."""
    return _bounded(f"ad-sandbox-{scope}", agent_name, 63)


def container_name(scope: str, agent_name: str, suffix: str) -> str:
    return f"{_bounded(f'ads-{scope}', agent_name, 100)}-{suffix}"[:128]


def agent_image(config: Config, agent: Agent) -> str:
    return agent.image or config.settings.images.agent


def directory_owner(agent_name: str, agent: Agent, pins: PinStore | None = None) -> Owner:
    """The uid:gid owning the agent directory; the run's user, so files it writes are theirs.

    With ``pins`` (the state store) the directory must still be the one registered: no
    component became a symlink, same device and inode (:func:`verify_directory`).
    """
    stat = verify_directory(agent_name, agent, pins)
    # Never root: agents.NAME.user, else the owner with id 0 replaced (orchestrator.privilege).
    return Owner(*run_ids(agent.user, stat.st_uid, stat.st_gid))


def container_spec(
    *,
    scope: str,
    agent_name: str,
    agent: Agent,
    image: str,
    owner: Owner,
    network: str,
    suffix: str,
    owner_pid: int,
    lease_s: float,
    run_id: str = "",
    extra_labels: dict[str, str] | None = None,
) -> ContainerSpec:
    """The container of one run (or one warm container waiting for a run)."""
    labels = {
        **scope_labels(scope, agent_name),
        LABEL_RUN: run_id,
        LABEL_OWNER: str(owner_pid),
        LABEL_LEASE: str(int(time.time() + lease_s)),
        **(extra_labels or {}),
    }
    resources = agent.resources
    secrets_opts = f"size=1m,mode=0700,uid={owner.uid},gid={owner.gid}"
    return ContainerSpec(
        name=container_name(scope, agent_name, suffix),
        image=image,
        user=owner.user,
        workdir=WORKSPACE,
        env={"HOME": HOME_DIR, "CLAUDE_CONFIG_DIR": CONFIG_DIR},
        labels=labels,
        mounts=(
            Mount(str(agent.path), WORKSPACE, read_only=agent.mount == "ro", kind="bind"),
            Mount(volume_name(scope, agent_name), SESSIONS_DIR, read_only=False, kind="volume"),
        ),
        tmpfs={
            "/tmp": f"size={resources.tmp_bytes},mode=1777,exec",
            SECRETS_DIR: secrets_opts,
            CONFIG_DIR: f"size=64m,mode=0700,uid={owner.uid},gid={owner.gid}",
            RUN_DIR: f"size=8m,mode=0700,uid={owner.uid},gid={owner.gid}",
        },
        network=network,
        cpus=resources.cpus,
        memory_bytes=resources.memory_bytes,
        pids_limit=resources.pids,
        runtime=agent.sandbox.runtime,
    )


def read_secrets(agent_name: str, agent: Agent) -> dict[str, bytes]:
    """Resolve the agent's secrets on the host; a missing source is a config error."""
    values: dict[str, bytes] = {}
    for name, source in agent.secrets.items():
        if isinstance(source, EnvSource):
            value = os.environ.get(source.env)
            if value is None:
                raise ConfigError(
                    f"agent {agent_name!r}: secret {name} reads ${source.env}, which is not set",
                    hint=f"Export {source.env} in the orchestrator's environment.",
                    agent=agent_name,
                )
            values[name] = value.encode()
        else:
            path = Path(source.file).expanduser()
            try:
                values[name] = path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"agent {agent_name!r}: secret {name} reads {path}: {exc.strerror}",
                    hint="Fix the path in the agent's secrets.",
                    agent=agent_name,
                ) from None
    return values
