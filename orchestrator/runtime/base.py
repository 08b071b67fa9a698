"""The container runtime interface: plain data types and the :class:`Runtime` protocol.

Two implementations satisfy it: :class:`~orchestrator.runtime.docker_runtime.DockerRuntime`
(the real engine) and :class:`~orchestrator.runtime.fake.FakeRuntime` (in memory, for unit
tests). One contract suite (``tests/runtime_contract.py``) runs against both.

The hardening of SPEC §4 is not part of :class:`ContainerSpec` on purpose: an implementation
always applies it (read-only root, no capabilities, no-new-privileges, an init process, no
privileged mode, no host network, never the Docker socket), so no caller can turn it off.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

MANAGED_LABEL = "ad-sandbox.managed"
"""Every container the runtime creates carries ``ad-sandbox.managed=1``."""
WORKSPACE_VOLUME_LABEL = "ad-sandbox.workspace"
"""Carried by the volumes a runtime makes to mount a project; see :meth:`Runtime.prune_volumes`."""

FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
"""Names accepted by :meth:`Runtime.write_files`: one path component, no dot-dot."""

RUNTIME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FORBIDDEN_NETWORKS = frozenset({"host"})
_DOCKER_SOCKETS = ("docker.sock", "containerd.sock")


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path or a named volume."""

    source: str
    target: str
    read_only: bool
    kind: Literal["bind", "volume"] = "bind"


@dataclass(frozen=True)
class ContainerSpec:
    """What to start. Hardening is not configurable; see the module docstring."""

    name: str
    image: str
    user: str  # "uid:gid"
    workdir: str
    env: dict[str, str]
    labels: dict[str, str]
    mounts: tuple[Mount, ...]
    tmpfs: dict[str, str]  # path -> options, e.g. "size=256m,mode=1777"
    network: str
    cpus: float
    memory_bytes: int
    pids_limit: int
    command: tuple[str, ...] = ("sleep", "infinity")
    runtime: str = "runc"
    """The engine's OCI runtime: ``runc``, or ``runsc`` (gVisor, :mod:`.gvisor`)."""

    def __post_init__(self) -> None:
        # A spec that weakens the sandbox is a programming error, caught before any
        # container exists.
        if self.network in _FORBIDDEN_NETWORKS or self.network.startswith("container:"):
            raise ValueError(f"network {self.network!r} is not allowed for a sandbox")
        for mount in self.mounts:
            if any(mount.source.endswith(sock) for sock in _DOCKER_SOCKETS):
                raise ValueError(f"mounting {mount.source!r} into a sandbox is not allowed")
            if not posixpath.isabs(mount.target):
                raise ValueError(f"mount target {mount.target!r} must be an absolute path")
        for path in self.tmpfs:
            if not posixpath.isabs(path):
                raise ValueError(f"tmpfs path {path!r} must be an absolute path")
        if not RUNTIME_NAME.fullmatch(self.runtime):
            raise ValueError(f"runtime {self.runtime!r} is not a runtime name")
        if self.cpus <= 0 or self.memory_bytes <= 0 or self.pids_limit <= 0:
            raise ValueError("cpus, memory_bytes and pids_limit must be positive")
        if not re.fullmatch(r"\d+(:\d+)?", self.user):
            raise ValueError(f"user {self.user!r} must be numeric 'uid:gid'")
        if 0 in (int(part) for part in self.user.split(":")):
            # Files a root run plants (setuid root) outlive the container on the host.
            raise ValueError(f"user {self.user!r}: a sandbox never runs as root (id 0)")


@dataclass(frozen=True)
class ExecResult:
    """How an exec'd process ended.

    ``exit_code`` is None when the engine could not tell (the container was killed and
    removed under it); 137 means SIGKILL. ``oom_killed`` is only ever looked up when the
    process died by SIGKILL, so a normal run pays nothing for it.
    """

    exit_code: int | None
    oom_killed: bool = False


@dataclass(frozen=True)
class ContainerState:
    """A container as the engine reports it.

    ``oom_killed`` is the engine's ``State.OOMKilled``, which covers PID 1 only; for a
    process started by exec use :meth:`Runtime.was_oom_killed` or ``ExecResult.oom_killed``.
    """

    id: str
    status: str  # created | running | exited | dead | removing | paused
    running: bool
    exit_code: int | None
    oom_killed: bool
    labels: dict[str, str] = field(default_factory=dict)
    name: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    """Network name → the container's IPv4 address on it."""


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    gateway_ip: str
    internal: bool
    subnet: str = ""
    """Its IPv4 subnet in CIDR form, when the engine says."""


LineCallback = Callable[[str], None]


@runtime_checkable
class Runtime(Protocol):
    """Create, run in, kill and remove sandbox containers.

    Every method raises only :class:`~orchestrator.errors.SandboxError` subclasses:
    ``DockerUnavailable`` (no engine), ``ImageMissing``, ``ContainerFailed``.
    """

    def ensure_network(self, name: str, *, internal: bool, labels: dict[str, str],
                       options: Mapping[str, str] | None = None) -> NetworkInfo:
        """Create the bridge network unless it exists; a mismatched ``internal`` is an error.

        ``options`` are driver options the network must have; one made without them is
        recreated when no container uses it, else refused.
        """
        ...

    def remove_network(self, name: str) -> None:
        """Remove the network; no error if it is gone."""
        ...

    def connect_network(self, container_id: str, network: str, *,
                        aliases: Sequence[str] = ()) -> str:
        """Attach the container to ``network`` (once; no-op when attached) with ``aliases``;
        return its IPv4 address there."""
        ...

    def ensure_volume(self, name: str, *, labels: dict[str, str]) -> None:
        """Create the named volume unless it exists."""
        ...

    def remove_volume(self, name: str) -> None:
        """Remove the volume; no error if it is gone."""
        ...

    def prune_volumes(self, label_filter: dict[str, str]) -> list[str]:
        """Remove the managed volumes with these labels that no container uses; their names."""
        ...

    def prepare_volume(self, name: str, *, labels: dict[str, str], image: str, uid: int,
                       gid: int) -> None:
        """Create the volume unless it exists; make its root 0700 and it and all it holds
        owned by ``uid:gid``, following no symlink. Done, when the volume is not known to
        be so already, by a throwaway container of ``image`` that mounts nothing else."""
        ...

    def list_volumes(self, label_filter: dict[str, str]) -> list[str]:
        """The names of the managed volumes carrying these labels."""
        ...

    def create(self, spec: ContainerSpec) -> str:
        """Create and start a hardened container; returns its id.

        On failure nothing is left behind.
        """
        ...

    def write_files(
        self,
        container_id: str,
        directory: str,
        files: dict[str, bytes],
        *,
        uid: int,
        gid: int,
        mode: int = 0o400,
    ) -> None:
        """Write files into a writable (tmpfs) directory of a running container.

        The contents travel over stdin only: they never appear in the container's
        command, environment, labels or ``docker inspect``. Names must match
        :data:`FILE_NAME`; ``directory`` must be writable by ``uid``.
        """
        ...

    def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        user: str,
        workdir: str,
        stdin_file: str | None,
        on_stdout_line: LineCallback,
        on_stderr: LineCallback,
        stdin_data: bytes | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the container and block until it ends or the container dies.

        stdout is delivered line by line (without the newline) as it is produced, stderr
        in chunks. stdin is ``stdin_data`` (then closed), else the file ``stdin_file``
        inside the container, else empty.
        """
        ...

    def kill(self, container_id: str) -> None:
        """SIGKILL the container now; no error if it is stopped or gone."""
        ...

    def remove(self, container_id: str) -> None:
        """Force-remove the container; no error if it is gone."""
        ...

    def inspect(self, container_id: str) -> ContainerState | None:
        """The container's state, or None if it does not exist."""
        ...

    def list_managed(self, label_filter: dict[str, str] | None = None) -> list[ContainerState]:
        """Containers labelled ``ad-sandbox.managed=1`` (and ``label_filter``), any state."""
        ...

    def logs(self, container_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the container's own output; "" if it is gone."""
        ...

    def was_oom_killed(self, container_id: str, *, since: float | None = None,
                       deep: bool = True) -> bool:
        """Whether the kernel OOM killer hit any process of the container.

        ``since`` (Unix time) limits the answer to kills after that moment; None means
        since the container started. ``deep=False`` skips the slower checks that only
        matter when the engine's recent events may have been evicted (a long SIGKILLed run).
        """
        ...


def check_file_names(files: dict[str, bytes]) -> None:
    """Reject names that could escape the target directory."""
    for name in files:
        if not FILE_NAME.fullmatch(name) or name in {".", ".."}:
            raise ValueError(f"file name {name!r} must be one plain path component")
