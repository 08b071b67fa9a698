"""Configuration models (SPEC §3): frozen, unknown keys rejected, validated once at load.

Loading from a file, line numbers in errors, snapshots and atomic writes live in
:mod:`orchestrator.configfile`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.privilege import parse_user

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$"
"""Agent and group names become container and volume names."""
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
CONFIG_DIR = "config_dir"
"""Validation context key: the directory of the file being loaded (relative paths' base)."""
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

PermissionMode = Literal["acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan"]
Egress = Literal["none", "gateway-only", "allowlist", "learn", "open"]
"""``none`` (the default; ``gateway-only`` is its older name): the gateway is the only exit.
``allowlist``: HTTP and HTTPS to ``allow_hosts`` only, through the egress proxy.
``learn``: every host allowed through the proxy and recorded (``ad-sandbox egress suggest``).
``open``: every host allowed through the proxy."""
HOST_PATTERN = r"(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
"""An ``allow_hosts`` entry: a host name, or ``*.`` and a domain (its subdomains only)."""
SERVER_TOOLS = frozenset({
    "web_search", "web_fetch", "code_execution", "bash", "text_editor", "computer", "memory",
    "tool_search_tool_regex", "tool_search_tool_bm25", "mcp_servers", "container", "files",
    "url_sources",
})
"""What ``agents.NAME.server_tools`` may name: a typed tool's family (its ``type`` without
the date, like ``web_search`` for ``web_search_20250305``), or ``mcp_servers`` (the MCP
connector), ``container`` (code execution containers), ``files`` (Files API references),
``url_sources`` (blocks the API fetches from a URL). A full dated type (``NAME_YYYYMMDD``)
is accepted too, for tools newer than this list."""
_DATED_TOOL = re.compile(r"^[a-z][a-z0-9_]*_\d{8}$")
Mount = Literal["rw", "ro"]
OciRuntime = Literal["runc", "runsc"]
RUNTIMES: tuple[OciRuntime, ...] = ("runc", "runsc")
"""What ``agents.NAME.sandbox.runtime`` may name (the engine must know it)."""


def parse_size(value: str) -> int:
    """``"2g"`` → bytes. Raises ValueError with the accepted form."""
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size; use a number with k, m or g, like 512m or 2g")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvSource(_Frozen):
    """Read the value from an environment variable of the orchestrator."""

    env: str = Field(min_length=1)


class FileSource(_Frozen):
    """Read the value from a file on the orchestrator's host."""

    file: str = Field(min_length=1)


SecretSource = EnvSource | FileSource


class Budget(_Frozen):
    per_run: Annotated[float, Field(ge=0)] = 1.00
    per_root: Annotated[float, Field(ge=0)] = 5.00
    daily: Annotated[float, Field(ge=0)] = 50.00


class CacheSettings(_Frozen):
    enabled: bool = True
    ttl: Annotated[int, Field(ge=0)] = 300


class ModelApi(_Frozen):
    upstream: str = "https://api.anthropic.com"
    credential: SecretSource | None = EnvSource(env="ANTHROPIC_API_KEY")
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)
    """Per-model USD per million tokens (input, output); overrides the built-in table."""

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        if value != "stub" and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is neither 'stub' nor an http(s) URL")
        return value.rstrip("/")

    @property
    def is_stub(self) -> bool:
        return self.upstream == "stub"


class Images(_Frozen):
    agent: str = "ad-sandbox/agent:latest"


class Pool(_Frozen):
    warm_per_agent: Annotated[int, Field(ge=0, le=16)] = 1


class LogSettings(_Frozen):
    max_bytes: Annotated[int, Field(ge=65536, le=1024**3)] = 8 * 1024**2
    """Cap of one run's log file; past it the middle is dropped (head, marker, tail kept)."""


class Settings(_Frozen):
    max_dispatch_depth: Annotated[int, Field(ge=0, le=10)] = 3
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    default_timeout: Annotated[float, Field(gt=0)] = 300
    budget: Budget = Budget()
    cache: CacheSettings = CacheSettings()
    model_api: ModelApi = ModelApi()
    images: Images = Images()
    pool: Pool = Pool()
    logs: LogSettings = LogSettings()
    agent_management_tools: bool = False
    allowed_roots: list[str] = Field(default_factory=list)
    host_firewall: Literal["required", "off"] = "required"
    """``required``: runs refuse to start unless the host rules that keep them gateway-only
    are in place (root + iptables); ``off``: an explicit opt-out (host services answer)."""


class Resources(_Frozen):
    cpus: Annotated[float, Field(gt=0, le=256)] = 1.0
    memory: str = "2g"
    pids: Annotated[int, Field(ge=16, le=65536)] = 512
    tmp_size: str = "256m"

    @field_validator("memory", "tmp_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) < 4 * 1024**2:
            raise ValueError(f"{value!r} is below the 4m minimum")
        return value

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def tmp_bytes(self) -> int:
        return parse_size(self.tmp_size)


class Network(_Frozen):
    egress: Egress = "none"

    @property
    def proxied(self) -> bool:
        """Whether runs reach the egress proxy (every mode but ``none``)."""
        return self.egress not in ("none", "gateway-only")


class SandboxSettings(_Frozen):
    runtime: OciRuntime = "runc"
    """The isolation level: ``runc`` (Linux namespaces) or ``runsc`` (gVisor, a user-space
    kernel between the agent and the host's; it must be registered with the engine)."""

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime(cls, value: object) -> object:
        if value not in RUNTIMES:
            raise ValueError(f"runtime {value!r} is unknown; use runc (the default) or runsc "
                             "(gVisor)")
        return value


class Agent(_Frozen):
    directory: str = Field(min_length=1)
    description: str = ""
    model: str | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    max_budget_usd: Annotated[float, Field(ge=0)] | None = None
    permission_mode: PermissionMode = "bypassPermissions"
    allowed_tools: list[str] = Field(default_factory=list)
    disallowed_tools: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    instructions: str = ""
    mount: Mount = "rw"
    image: str | None = None
    resources: Resources = Resources()
    network: Network = Network()
    sandbox: SandboxSettings = SandboxSettings()
    allow_hosts: list[str] = Field(default_factory=list)
    secrets: dict[str, SecretSource] = Field(default_factory=dict)
    dispatch_to: list[str] = Field(default_factory=list)
    server_tools: list[str] = Field(default_factory=list)
    """Model API features that reach outside the run (web search, code execution, the MCP
    connector, Files API...) the relay lets this agent's requests use; see SERVER_TOOLS."""
    user: str | None = None
    """``"UID[:GID]"`` the run's processes get; default: the directory's owner, with root
    replaced by an unprivileged id (:mod:`orchestrator.privilege`). Never 0."""

    @field_validator("user", mode="before")
    @classmethod
    def _user(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML reads 1000:50 as the base-60 number 60050: only a quoted string is clear.
            raise ValueError(f"read as the number {value} (YAML reads an unquoted 1000:50 in "
                             "base 60): quote it, like user: \"1000:1000\"")
        if isinstance(value, str):
            parse_user(value)
            return value.strip()
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: list[str]) -> list[str]:
        hosts = []
        for entry in value:
            host = entry.strip().lower().rstrip(".")
            if len(host) > 253 or not re.fullmatch(HOST_PATTERN, host):
                raise ValueError(f"allow_hosts entry {entry!r} is not a host name (like "
                                 "api.example.org) or a wildcard domain (like *.github.com)")
            hosts.append(host)
        return hosts

    @model_validator(mode="after")
    def _allow_hosts_need_allowlist(self) -> Agent:
        # In learn and open they are kept (unused) so switching modes loses nothing.
        if self.allow_hosts and not self.network.proxied:
            raise ValueError(f"allow_hosts is set but network.egress is {self.network.egress} "
                             "(no egress at all); set network: {egress: allowlist} to use it")
        return self

    @field_validator("server_tools")
    @classmethod
    def _server_tools(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in SERVER_TOOLS and not _DATED_TOOL.fullmatch(name):
                known = ", ".join(sorted(SERVER_TOOLS))
                raise ValueError(f"server tool {name!r} is unknown; use one of {known}, "
                                 "or a full dated type like web_search_20250305")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, SecretSource]) -> dict[str, SecretSource]:
        for name in value:
            if not re.fullmatch(SECRET_NAME_PATTERN, name):
                raise ValueError(f"secret name {name!r} must match {SECRET_NAME_PATTERN}")
        return value

    _base: Path | None = PrivateAttr(default=None)
    """The directory of the file this agent was loaded from, kept only when ``directory`` is
    relative (so agents with absolute directories compare equal whatever file held them)."""

    @model_validator(mode="after")
    def _anchor(self, info: ValidationInfo) -> Agent:
        base = (info.context or {}).get(CONFIG_DIR)
        if base is not None and not Path(self.directory).expanduser().is_absolute():
            self._base = Path(base)
        return self

    @property
    def path(self) -> Path:
        """The agent directory, with ``~`` expanded, absolute; a relative one is relative to
        the config file it came from (to the current directory for a config from no file)."""
        path = Path(self.directory).expanduser()
        if self._base is not None and not path.is_absolute():
            path = self._base / path
        return path.absolute()


class GroupMember(_Frozen):
    agent: str
    use_for: str = ""


class Group(_Frozen):
    description: str = ""
    shared_context: str = ""
    members: list[GroupMember] = Field(default_factory=list)


class Config(_Frozen):
    settings: Settings = Settings()
    agents: dict[str, Agent] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=dict)

    @field_validator("agents", "groups")
    @classmethod
    def _names(cls, value: dict[str, object]) -> dict[str, object]:
        for name in value:
            if not re.fullmatch(NAME_PATTERN, str(name)):
                raise ValueError(
                    f"name {name!r} must match {NAME_PATTERN} (it becomes a container name)"
                )
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        for name, agent in self.agents.items():
            for target in agent.dispatch_to:
                if target != "*" and target not in self.agents:
                    raise ValueError(f"agents.{name}.dispatch_to names unknown agent {target!r}")
        for name, group in self.groups.items():
            for member in group.members:
                if member.agent not in self.agents:
                    raise ValueError(f"groups.{name}.members names unknown agent {member.agent!r}")
        return self

    def agent(self, name: str) -> Agent:
        """The agent called ``name``; raises :class:`AgentNotFound` with the known names."""
        from orchestrator.errors import AgentNotFound

        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none registered"
            raise AgentNotFound(
                f"unknown agent {name!r} (known: {known})",
                hint="Call list_agents (or run `ad-sandbox list`) to see the agents; register "
                "one with `ad-sandbox add NAME DIR`.",
                agent=name,
            ) from None
