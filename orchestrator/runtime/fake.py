"""An in-memory :class:`~orchestrator.runtime.base.Runtime` for fast unit tests.

Processes are Python callables ("behaviours") chosen by ``argv[0]``, then by image, then
the default (echo). A behaviour runs in its own thread, so :meth:`FakeRuntime.kill` ends an
exec at once even if the behaviour ignores it, as ``docker kill`` does. Hooks simulate an
OOM kill, a missing image, an engine that is down and one-shot failures; every call is
recorded in :attr:`FakeRuntime.calls`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ContainerFailed, DockerUnavailable, ImageMissing, SandboxError
from orchestrator.runtime import gvisor
from orchestrator.runtime.base import (
    MANAGED_LABEL,
    ContainerSpec,
    ContainerState,
    ExecResult,
    LineCallback,
    NetworkInfo,
    check_file_names,
)

SIGKILL_EXIT = 137
_BUILTIN_NETWORKS = frozenset({"none", "bridge", "default"})
_HANG_LIMIT = 600.0


@dataclass
class FakeFile:
    data: bytes
    uid: int
    gid: int
    mode: int


@dataclass
class _Container:
    id: str
    spec: ContainerSpec
    labels: dict[str, str]
    status: str = "running"
    exit_code: int | None = None
    files: dict[str, FakeFile] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    oom_times: list[float] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class FakeExec:
    """What a behaviour sees: the call, its stdin, and hooks to act like a process."""

    def __init__(
        self,
        runtime: FakeRuntime,
        container_id: str,
        argv: tuple[str, ...],
        env: dict[str, str],
        user: str,
        workdir: str,
        stdin: bytes,
        on_stdout_line: LineCallback,
        on_stderr: LineCallback,
    ) -> None:
        self.runtime = runtime
        self.container_id = container_id
        self.argv = argv
        self.env = env
        self.user = user
        self.workdir = workdir
        self.stdin = stdin
        self.ended = threading.Event()  # set when the exec has returned to its caller
        self._on_stdout_line = on_stdout_line
        self._on_stderr = on_stderr

    def out(self, line: str) -> None:
        """Print one line on stdout (dropped once the process is dead)."""
        if not self.ended.is_set():
            self._on_stdout_line(line)

    def err(self, text: str) -> None:
        if not self.ended.is_set():
            self._on_stderr(text)

    def wait_ended(self, timeout: float) -> bool:
        """Block like a long-running process until killed; True if it was."""
        return self.ended.wait(timeout)

    def read_file(self, path: str) -> FakeFile | None:
        return self.runtime.file(self.container_id, path)

    def oom(self) -> int:
        """Be killed by the OOM killer: returns the exit code to hand back."""
        self.runtime.simulate_oom(self.container_id)
        return SIGKILL_EXIT


Behaviour = Callable[[FakeExec], int | None]


def echo(proc: FakeExec) -> int:
    """Default behaviour: print stdin's lines, or the argv when stdin is empty."""
    text = proc.stdin.decode("utf-8", errors="replace")
    for line in text.splitlines() if text else [" ".join(proc.argv)]:
        proc.out(line)
    return 0


def hang(proc: FakeExec) -> int | None:
    """Run until killed (bounded, so a broken test cannot hang forever)."""
    proc.wait_ended(_HANG_LIMIT)
    return None


class FakeRuntime:
    """Thread-safe in-memory runtime; see the module docstring."""

    def __init__(self, *, images: set[str] | None = None, default: Behaviour = echo) -> None:
        self.images = images  # None: every image exists
        self.available = True  # False: behave like an engine that is down
        self.runtimes = {"runc"}  # the OCI runtimes registered with this engine
        self.default = default
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_next: dict[str, SandboxError] = {}  # method name -> error, raised once
        self._by_command: dict[str, Behaviour] = {}
        self._by_image: dict[str, Behaviour] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._containers: dict[str, _Container] = {}
        self._running: dict[str, set[FakeExec]] = {}
        self.networks: dict[str, NetworkInfo] = {}
        self._address_seq = 0
        self.network_options: dict[str, dict[str, str]] = {}
        self.volumes: dict[str, dict[str, str]] = {}
        self.volume_owners: dict[str, tuple[int, int]] = {}  # set by prepare_volume

    # -- set-up hooks ----------------------------------------------------------------

    def on_command(self, argv0: str, behaviour: Behaviour) -> None:
        self._by_command[argv0] = behaviour

    def on_image(self, image: str, behaviour: Behaviour) -> None:
        self._by_image[image] = behaviour

    def simulate_oom(self, container_id: str) -> None:
        """The OOM killer hits the container's processes: running execs end with 137."""
        with self._lock:
            box = self._get(container_id)
            box.oom_times.append(time.time())
            for proc in self._running.get(container_id, set()):
                proc.ended.set()
            self._changed.notify_all()

    def file(self, container_id: str, path: str) -> FakeFile | None:
        with self._lock:
            return self._get(container_id).files.get(path)

    def raw_inspect(self, container_id: str) -> str:
        """What ``docker inspect`` would show: spec, labels, state (never file contents)."""
        with self._lock:
            box = self._get(container_id)
            return repr((box.id, box.spec, box.labels, box.status, box.exit_code))

    # -- Runtime: networks and volumes -------------------------------------------------

    def ensure_network(self, name: str, *, internal: bool, labels: dict[str, str],
                       options: Mapping[str, str] | None = None) -> NetworkInfo:
        self._enter("ensure_network", name, internal)
        with self._lock:
            self.network_options[name] = dict(options or {})
            info = self.networks.get(name)
            if info is None:
                prefix = f"172.30.{len(self.networks) % 250}"
                info = NetworkInfo(name, f"{prefix}.1", internal, subnet=f"{prefix}.0/24")
                self.networks[name] = info
            if info.internal != internal:
                raise SandboxError(f"network {name} exists with internal={info.internal}")
            return info

    def remove_network(self, name: str) -> None:
        self._enter("remove_network", name)
        with self._lock:
            self.networks.pop(name, None)

    def ensure_volume(self, name: str, *, labels: dict[str, str]) -> None:
        self._enter("ensure_volume", name)
        with self._lock:
            self.volumes.setdefault(name, dict(labels))

    def remove_volume(self, name: str) -> None:
        self._enter("remove_volume", name)
        with self._lock:
            self.volumes.pop(name, None)
            self.volume_owners.pop(name, None)

    def prepare_volume(self, name: str, *, labels: dict[str, str], image: str, uid: int,
                       gid: int) -> None:
        self._enter("prepare_volume", name, uid, gid)
        with self._lock:
            self.volumes.setdefault(name, dict(labels))
            self.volume_owners[name] = (uid, gid)

    def list_volumes(self, label_filter: dict[str, str]) -> list[str]:
        self._enter("list_volumes", label_filter)
        wanted = {MANAGED_LABEL: "1", **label_filter}
        with self._lock:
            return [name for name, labels in self.volumes.items()
                    if wanted.items() <= labels.items()]

    def prune_volumes(self, label_filter: dict[str, str]) -> list[str]:
        self._enter("prune_volumes", label_filter)
        wanted = {MANAGED_LABEL: "1", **label_filter}
        with self._lock:
            used = {m.source for c in self._containers.values() for m in c.spec.mounts}
            names = [name for name, labels in self.volumes.items()
                     if name not in used and wanted.items() <= labels.items()]
            for name in names:
                del self.volumes[name]
        return names

    # -- Runtime: containers -----------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        self._enter("create", spec)
        with self._lock:
            if self.images is not None and spec.image not in self.images:
                raise ImageMissing(f"image {spec.image} is not on this machine", image=spec.image)
            if any(c.spec.name == spec.name for c in self._containers.values()):
                raise ContainerFailed(f"name {spec.name} is already in use", status=409)
            if spec.network not in _BUILTIN_NETWORKS and spec.network not in self.networks:
                raise ContainerFailed(f"network {spec.network} not found", status=404)
            if spec.runtime not in self.runtimes:
                raise gvisor.not_registered(spec.runtime, spec.name)
            container_id = uuid.uuid4().hex + uuid.uuid4().hex
            labels = {**spec.labels, MANAGED_LABEL: "1"}
            box = _Container(container_id, spec, labels)
            box.addresses[spec.network] = self._next_address(spec.network)
            self._containers[container_id] = box
            return container_id

    def _next_address(self, network: str) -> str:
        info = self.networks.get(network)
        prefix = info.gateway_ip.rsplit(".", 1)[0] if info else "172.31.0"
        self._address_seq += 1
        return f"{prefix}.{1 + self._address_seq % 250}"

    def connect_network(self, container_id: str, network: str, *,
                        aliases: Sequence[str] = ()) -> str:
        self._enter("connect_network", container_id, network)
        with self._lock:
            box = self._get(container_id)
            if network not in self.networks:
                raise ContainerFailed(f"network {network} not found", status=404)
            if network not in box.addresses:
                box.addresses[network] = self._next_address(network)
            return box.addresses[network]

    def kill(self, container_id: str) -> None:
        self._enter("kill", container_id)
        with self._lock:
            box = self._containers.get(container_id)
            if box is None or box.status != "running":
                return
            box.status, box.exit_code = "exited", SIGKILL_EXIT
            for proc in self._running.pop(container_id, set()):
                proc.ended.set()
            self._changed.notify_all()

    def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        with self._lock:
            self.kill(container_id)
            self._containers.pop(container_id, None)

    def inspect(self, container_id: str) -> ContainerState | None:
        self._enter("inspect", container_id)
        with self._lock:
            box = self._containers.get(container_id)
            return None if box is None else self._state(box)

    def list_managed(self, label_filter: dict[str, str] | None = None) -> list[ContainerState]:
        self._enter("list_managed", label_filter)
        wanted = {MANAGED_LABEL: "1", **(label_filter or {})}
        with self._lock:
            return [
                self._state(box)
                for box in self._containers.values()
                if all(box.labels.get(k) == v for k, v in wanted.items())
            ]

    def logs(self, container_id: str, tail: int = 200) -> str:
        self._enter("logs", container_id)
        with self._lock:
            box = self._containers.get(container_id)
            return "" if box is None else "".join(f"{line}\n" for line in box.log[-tail:])

    def was_oom_killed(self, container_id: str, *, since: float | None = None,
                       deep: bool = True) -> bool:
        self._enter("was_oom_killed", container_id)
        with self._lock:
            box = self._containers.get(container_id)
            start = since if since is not None else 0.0
            return box is not None and any(t >= start for t in box.oom_times)

    # -- Runtime: files and processes --------------------------------------------------

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
        self._enter("write_files", container_id, directory, sorted(files), uid, gid, mode)
        check_file_names(files)
        with self._lock:
            box = self._running_container(container_id)
            if directory.rstrip("/") not in {p.rstrip("/") for p in box.spec.tmpfs}:
                raise ContainerFailed(f"{directory} is not a tmpfs (the root is read-only)")
            for name, data in files.items():
                box.files[f"{directory.rstrip('/')}/{name}"] = FakeFile(data, uid, gid, mode)

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
        argv = tuple(argv)
        self._enter("exec", container_id, argv, dict(env), user, workdir, stdin_file)
        started = time.time()
        with self._lock:
            box = self._running_container(container_id)
            stdin = b"" if stdin_data is None else stdin_data
            if stdin_data is None and stdin_file is not None and stdin_file != "/dev/null":
                found = box.files.get(stdin_file)
                if found is None:
                    on_stderr(f"sh: can't open {stdin_file}: no such file\n")
                    return ExecResult(exit_code=2)
                stdin = found.data
            behaviour = self._by_command.get(argv[0] if argv else "") or self._by_image.get(
                box.spec.image, self.default
            )
            proc = FakeExec(
                self, container_id, argv, dict(env), user, workdir, stdin,
                on_stdout_line, on_stderr,
            )  # fmt: skip
            self._running.setdefault(container_id, set()).add(proc)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["code"] = behaviour(proc)
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc
            with self._lock:
                outcome["done"] = True
                self._changed.notify_all()

        threading.Thread(target=run, name=f"fake-exec-{container_id[:8]}", daemon=True).start()
        with self._lock:
            self._changed.wait_for(lambda: "done" in outcome or proc.ended.is_set())
            killed = proc.ended.is_set() and "done" not in outcome
            proc.ended.set()
            self._running.get(container_id, set()).discard(proc)
            oom = any(t >= started for t in box.oom_times)
        if "error" in outcome:
            raise outcome["error"]
        if killed or oom:
            return ExecResult(exit_code=SIGKILL_EXIT, oom_killed=oom)
        code = outcome.get("code")
        return ExecResult(exit_code=None if code is None else int(code))

    # -- helpers -----------------------------------------------------------------------

    def _enter(self, method: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((method, args))
            if not self.available:
                raise DockerUnavailable("Docker engine not reachable (fake engine is down)")
            error = self.fail_next.pop(method, None)
        if error is not None:
            raise error

    def _get(self, container_id: str) -> _Container:
        box = self._containers.get(container_id)
        if box is None:
            raise ContainerFailed(f"no such container {container_id[:12]}", status=404)
        return box

    def _running_container(self, container_id: str) -> _Container:
        box = self._get(container_id)
        if box.status != "running":
            raise ContainerFailed(
                f"container {container_id[:12]} is not running",
                hint="The container has stopped or been removed; start a new run.",
                container=container_id,
                status=409,
            )
        return box

    @staticmethod
    def _state(box: _Container) -> ContainerState:
        return ContainerState(
            id=box.id,
            status=box.status,
            running=box.status == "running",
            exit_code=box.exit_code,
            oom_killed=False,  # like the engine: an exec'd process's OOM is not PID 1's
            labels=dict(box.labels),
            name=box.spec.name,
            addresses=dict(box.addresses),
        )
