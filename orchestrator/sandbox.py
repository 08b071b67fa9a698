"""How an agent becomes a container (SPEC §4): names, labels, mounts, limits, secrets.

Pure logic: it builds a :class:`ContainerSpec`; the runtime creates it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Agent, Config, EnvSource
from orchestrator.errors import ConfigError, UsageError
from orchestrator.runtime.base import ContainerSpec, Mount

AGENTS_NETWORK = "ad-sandbox-agents"
WORKSPACE = "/workspace"
CONFIG_DIR = "/var/lib/ad-sandbox/claude"
"""CLAUDE_CONFIG_DIR: the per-agent volume, so sessions survive across runs."""
SECRETS_DIR = "/run/secrets"
RUN_DIR = "/run/ad-sandbox"
"""A tmpfs for the prompt file and the MCP config of the current run."""
HOME_DIR = "/tmp/home"

LABEL_MANAGED = "ad-sandbox.managed"
LABEL_AGENT = "ad-sandbox.agent"
LABEL_RUN = "ad-sandbox.run"
LABEL_OWNER = "ad-sandbox.owner-pid"
LABEL_LEASE = "ad-sandbox.lease-until"

MANAGED = {LABEL_MANAGED: "1"}


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    @property
    def user(self) -> str:
        return f"{self.uid}:{self.gid}"


def volume_name(agent_name: str) -> str:
    return f"ad-sandbox-config-{agent_name}"


def container_name(agent_name: str, suffix: str) -> str:
    return f"ads-{agent_name}-{suffix}"[:128]


def agent_image(config: Config, agent: Agent) -> str:
    return agent.image or config.settings.images.agent


def directory_owner(agent_name: str, agent: Agent) -> Owner:
    """The uid:gid owning the agent directory; the run's user, so files it writes are theirs."""
    path = agent.path
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise UsageError(
            f"agent {agent_name!r}: directory {path} does not exist",
            hint=f"Restore it, or point the agent elsewhere with `ad-sandbox update {agent_name} "
            "--directory DIR`.",
            agent=agent_name,
        ) from None
    if not path.is_dir():
        raise UsageError(f"agent {agent_name!r}: {path} is not a directory", agent=agent_name)
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(
            f"agent {agent_name!r}: directory {path} is not readable", agent=agent_name
        )
    return Owner(stat.st_uid, stat.st_gid)


def container_spec(
    *,
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
        **MANAGED,
        LABEL_AGENT: agent_name,
        LABEL_RUN: run_id,
        LABEL_OWNER: str(owner_pid),
        LABEL_LEASE: str(int(time.time() + lease_s)),
        **(extra_labels or {}),
    }
    resources = agent.resources
    secrets_opts = f"size=1m,mode=0700,uid={owner.uid},gid={owner.gid}"
    return ContainerSpec(
        name=container_name(agent_name, suffix),
        image=image,
        user=owner.user,
        workdir=WORKSPACE,
        env={"HOME": HOME_DIR, "CLAUDE_CONFIG_DIR": CONFIG_DIR},
        labels=labels,
        mounts=(
            Mount(str(agent.path), WORKSPACE, read_only=agent.mount == "ro", kind="bind"),
            Mount(volume_name(agent_name), CONFIG_DIR, read_only=False, kind="volume"),
        ),
        tmpfs={
            "/tmp": f"size={resources.tmp_bytes},mode=1777,exec",
            SECRETS_DIR: secrets_opts,
            RUN_DIR: f"size=8m,mode=0700,uid={owner.uid},gid={owner.gid}",
        },
        network=network,
        cpus=resources.cpus,
        memory_bytes=resources.memory_bytes,
        pids_limit=resources.pids,
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


def redact(text: str, secrets: dict[str, bytes]) -> str:
    """Replace every secret value in ``text`` with a marker naming the secret."""
    for name, raw in secrets.items():
        value = raw.decode(errors="ignore").strip()
        if len(value) >= 4 and value in text:
            text = text.replace(value, f"[redacted:{name}]")
    return text
