"""The :class:`Runtime` on a real Docker engine (docker-py's low-level API).

Facts checked on Docker 20.10 / cgroup v1 that shape this module:

- ``put_archive`` into a tmpfs of a read-only-root container fails ("container rootfs is
  marked read-only"), so :meth:`DockerRuntime.write_files` streams each file over the stdin
  of an exec running as the target uid (no capability is needed for that).
- A process started by ``docker exec`` that the OOM killer hits leaves ``State.OOMKilled``
  false. The engine does emit an ``oom`` event for the container, and the cgroup counter
  ``oom_kill`` (v1 ``memory.oom_control``, v2 ``memory.events``) counts it; both are used.
- ``docker kill`` ends a streaming exec within tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import docker
import requests
from docker.errors import DockerException

from orchestrator.errors import ContainerFailed, SandboxError
from orchestrator.runtime import docker_exec, docker_network, gvisor
from orchestrator.runtime.base import (
    MANAGED_LABEL,
    ContainerSpec,
    ContainerState,
    ExecResult,
    LineCallback,
    NetworkInfo,
    check_file_names,
)
from orchestrator.runtime.docker_calls import Gone, call, translate
from orchestrator.runtime.engine import connect
from orchestrator.runtime.exec_streams import StreamRegistry
from orchestrator.runtime.mounts import engine_mounts
from orchestrator.runtime.volumes import VolumeKeeper

log = logging.getLogger(__name__)

_STDIN_WRAPPER = 'exec "$@" < "$0"'
"""``sh -c`` script: the first operand is the stdin file, the rest is the argv to run."""
_WRITE_SCRIPT = (
    'set -e; umask 077; cd "$1"; m="$2"; shift 2; rm -f -- "$@"; tar -xf -; chmod "$m" -- "$@"'
)
"""``sh -c`` script: unpack a tar from stdin into $1, then set mode $2 on the names after."""
_UNKNOWN_RUNTIME = "unknown runtime specified"
"""What the engine answers (400) to a container asking for a runtime it does not know."""
_OOM_COUNTERS = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")


class DockerRuntime:
    """Sandbox containers on the local engine; see :class:`~orchestrator.runtime.base.Runtime`.

    Raises :class:`~orchestrator.errors.DockerUnavailable` at construction when there is
    no engine.
    """

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client if client is not None else connect()
        self._api = self._client.api
        self._volumes = VolumeKeeper(self._api)
        self._streams = StreamRegistry()

    # -- networks and volumes --------------------------------------------------------

    def ensure_network(self, name: str, *, internal: bool, labels: dict[str, str],
                       options: Mapping[str, str] | None = None) -> NetworkInfo:
        return docker_network.ensure_network(self._api, name, internal=internal, labels=labels,
                                             options=options or {})

    def remove_network(self, name: str) -> None:
        with contextlib.suppress(Gone):
            call("remove network", partial(self._api.remove_network, name))

    def connect_network(self, container_id: str, network: str, *,
                        aliases: Sequence[str] = ()) -> str:
        state = self.inspect(container_id)
        if state is None:
            raise ContainerFailed(f"container {container_id[:12]} is gone", container=container_id)
        if network not in state.addresses:
            call("connect network", partial(self._api.connect_container_to_network,
                                            container_id, network, aliases=list(aliases) or None),
                 container=container_id)
            state = self.inspect(container_id)
        address = state.addresses.get(network, "") if state is not None else ""
        if not address:
            raise ContainerFailed(f"container {container_id[:12]} has no IPv4 address on "
                                  f"{network}", container=container_id, network=network)
        return address

    def ensure_volume(self, name: str, *, labels: dict[str, str]) -> None:
        # Creating a volume that exists returns it unchanged.
        call("create volume", partial(self._api.create_volume, name, labels=labels))

    def remove_volume(self, name: str) -> None:
        self._volumes.forget(name)
        with contextlib.suppress(Gone):
            call("remove volume", partial(self._api.remove_volume, name))

    def prepare_volume(self, name: str, *, labels: dict[str, str], image: str, uid: int,
                       gid: int) -> None:
        self._volumes.prepare(name, labels=labels, image=image, uid=uid, gid=gid)

    def list_volumes(self, label_filter: dict[str, str]) -> list[str]:
        return self._volumes.list(label_filter)

    def prune_volumes(self, label_filter: dict[str, str]) -> list[str]:
        wanted = [f"{MANAGED_LABEL}=1", *(f"{k}={v}" for k, v in label_filter.items())]
        listed = call("list volumes", partial(self._api.volumes,
                                              filters={"label": wanted, "dangling": True}))
        removed = []
        for volume in listed.get("Volumes") or []:
            name = str(volume["Name"])
            try:
                self.remove_volume(name)
            except ContainerFailed as exc:  # 409: a container took it since the listing
                log.info("volume %s not removed: %s", name[:12], exc.message)
                continue
            removed.append(name)
        return removed

    # -- containers ------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        host_config = self._api.create_host_config(
            mounts=engine_mounts(spec.mounts),
            tmpfs=dict(spec.tmpfs),
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            privileged=False,
            nano_cpus=int(spec.cpus * 1e9),
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,  # equal to the memory limit: no swap
            pids_limit=spec.pids_limit,
            network_mode=spec.network,
            runtime=spec.runtime,
        )
        try:
            create = partial(
                self._api.create_container,
                spec.image,
                command=list(spec.command),
                name=spec.name,
                user=spec.user,
                working_dir=spec.workdir,
                environment=dict(spec.env),
                labels={**spec.labels, MANAGED_LABEL: "1"},
                host_config=host_config,
                stdin_open=False,
                tty=False,
            )
            created = call("create container", create, image=spec.image)
        except ContainerFailed as exc:
            if _UNKNOWN_RUNTIME in exc.message.lower():
                raise gvisor.not_registered(spec.runtime, spec.name) from exc
            if not isinstance(exc, Gone):
                raise
            raise ContainerFailed(
                f"cannot create container {spec.name}: {exc.message}", container=spec.name
            ) from exc
        container_id = str(created["Id"])
        try:
            call("start container", partial(self._api.start, container_id), container=container_id)
        except SandboxError as exc:
            last_logs = self.logs(container_id, tail=50)
            self.remove(container_id)
            raise ContainerFailed(
                f"container {spec.name} did not start: {exc.message}",
                hint="Check the image and the mounts; the last log lines are attached.",
                container=spec.name,
                image=spec.image,
                last_logs=last_logs,
            ) from exc
        return container_id

    def kill(self, container_id: str) -> None:
        try:
            call("kill container", partial(self._api.kill, container_id, signal="SIGKILL"))
        except Gone:
            pass
        except ContainerFailed as exc:
            # 409 "is not running": already dead is what we wanted.
            if exc.data.get("status") != 409:
                raise
        finally:
            self._streams.abort(container_id)

    def remove(self, container_id: str) -> None:
        try:
            with contextlib.suppress(Gone):
                call("remove", partial(self._api.remove_container, container_id, force=True,
                                       v=True))
        finally:
            self._streams.abort(container_id)

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            attrs = call("inspect container", partial(self._api.inspect_container, container_id))
        except Gone:
            return None
        return _state(attrs)

    def list_managed(self, label_filter: dict[str, str] | None = None) -> list[ContainerState]:
        wanted = [f"{MANAGED_LABEL}=1", *(f"{k}={v}" for k, v in (label_filter or {}).items())]
        summaries = call(
            "list containers", partial(self._api.containers, all=True, filters={"label": wanted})
        )
        states = [self.inspect(str(s["Id"])) for s in summaries]
        # A container removed between the list and the inspect is simply not there.
        return [s for s in states if s is not None]

    def logs(self, container_id: str, tail: int = 200) -> str:
        try:
            raw = call(
                "read logs",
                partial(self._api.logs, container_id, stdout=True, stderr=True, tail=tail),
            )
        except Gone:
            return ""
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)

    # -- files and processes ---------------------------------------------------------

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
        check_file_names(files)
        if not files:
            return
        # One helper process for all files: a tar stream on its stdin.
        argv = ["/bin/sh", "-c", _WRITE_SCRIPT, "sh", directory, f"{mode:o}", *files]
        code, _, stderr = self._run_helper(
            container_id, argv, user=f"{uid}:{gid}", stdin=_tar(files)
        )
        if code != 0:
            raise ContainerFailed(
                f"could not write {', '.join(files)} into {directory} of container "
                f"{container_id[:12]}: {stderr.strip() or f'exit {code}'}",
                hint=f"{directory} must be a tmpfs writable by uid {uid}.",
                container=container_id,
            )

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
        started = time.time()
        if stdin_data is None:
            argv = ["/bin/sh", "-c", _STDIN_WRAPPER, stdin_file or "/dev/null", *argv]
        exec_id = self._exec_create(container_id, list(argv), env=env, user=user,
                                    workdir=workdir, stdin=stdin_data is not None)
        with self._streams.track(container_id, self._death_watch(container_id)) as stream:
            try:
                docker_exec.stream_output(self._api, exec_id, on_stdout_line, on_stderr,
                                          stdin=stdin_data, on_attached=stream.attach)
            except (DockerException, requests.RequestException, OSError) as exc:
                if not stream.aborted:
                    raise translate(exc, "stream exec output", container=container_id) from exc
        # An aborted stream's exec may never be reported ended (gVisor): do not wait for it.
        exit_code = None if stream.aborted else docker_exec.exit_code(self._api, exec_id)
        # Killed by a signal (137 under runc; 128 or no code when gVisor's sandbox died).
        signalled = exit_code is None or exit_code >= 128
        oom = signalled and self.was_oom_killed(container_id, since=started)
        return ExecResult(exit_code=exit_code, oom_killed=oom)

    def was_oom_killed(self, container_id: str, *, since: float | None = None,
                       deep: bool = True) -> bool:
        if self._oom_event_since(container_id, since):
            return True
        if not deep:
            return False
        state = self.inspect(container_id)
        if state is not None and state.oom_killed:
            return True
        # The engine keeps only its last events in memory; the cgroup counter cannot be
        # evicted. It covers the container's life, which is one run.
        return state is not None and state.running and self._oom_counter(container_id) > 0

    # -- helpers ---------------------------------------------------------------------

    def _exec_create(
        self,
        container_id: str,
        argv: list[str],
        *,
        user: str,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        stdin: bool = False,
    ) -> str:
        try:
            create = partial(
                self._api.exec_create,
                container_id,
                argv,
                stdout=True,
                stderr=True,
                stdin=stdin,
                tty=False,
                environment=env,
                workdir=workdir,
                user=user,
            )
            created = call("start a process", create, container=container_id)
        except ContainerFailed as exc:
            raise ContainerFailed(
                f"cannot run a process in container {container_id[:12]}: {exc.message}",
                hint="The container has stopped or been removed; start a new run.",
                container=container_id,
                last_logs=self.logs(container_id, tail=20),
            ) from exc
        return str(created["Id"])

    def _run_helper(
        self, container_id: str, argv: list[str], *, user: str, stdin: bytes | None = None
    ) -> tuple[int | None, bytes, str]:
        """Run a short helper process to the end; returns (exit code, stdout, stderr)."""
        exec_id = self._exec_create(container_id, argv, user=user, stdin=stdin is not None)
        try:
            out, err = docker_exec.collect(self._api, exec_id, stdin)
        except (DockerException, requests.RequestException, OSError) as exc:
            raise translate(exc, f"run {argv[0]}", container=container_id) from exc
        return docker_exec.exit_code(self._api, exec_id), out, err

    def _death_watch(self, container_id: str) -> Callable[[], bool] | None:
        """For a gVisor container, whether it still runs (see :mod:`.exec_streams`)."""
        try:
            attrs = call("inspect container", partial(self._api.inspect_container, container_id))
        except Gone:
            return None
        if (attrs.get("HostConfig") or {}).get("Runtime") != gvisor.RUNSC:
            return None

        def alive() -> bool:
            try:
                state = self.inspect(container_id)
            except SandboxError:  # the engine did not answer this time: ask again later
                return True
            return state is not None and state.running

        return alive

    def _oom_event_since(self, container_id: str, since: float | None) -> bool:
        # Fractional timestamps are fine for the engine; an `until` in the future would
        # make it wait for that moment.
        until: Any = f"{time.time():.6f}"
        start: Any = f"{since - 1:.6f}" if since is not None else "0"
        try:
            events = self._api.events(
                since=start,
                until=until,
                filters={"container": container_id, "event": "oom"},
                decode=True,
            )
            try:
                return any(True for _ in events)
            finally:
                events.close()
        except (DockerException, requests.RequestException) as exc:
            log.warning("could not read engine events for %s: %s", container_id[:12], exc)
            return False

    def _oom_counter(self, container_id: str) -> int:
        try:
            # One of the two files exists (cgroup v1 or v2), so cat's exit code is ignored.
            _, output, _ = self._run_helper(container_id, ["cat", *_OOM_COUNTERS], user="0:0")
        except SandboxError as exc:
            log.warning("could not read the OOM counter of %s: %s", container_id[:12], exc)
            return 0
        text = output.decode("utf-8", errors="replace")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0


def _state(attrs: dict[str, Any]) -> ContainerState:
    state = attrs.get("State") or {}
    status = str(state.get("Status", "unknown"))
    running = bool(state.get("Running"))
    code = state.get("ExitCode")
    return ContainerState(
        id=str(attrs["Id"]),
        status=status,
        running=running,
        exit_code=None if running or status == "created" or code is None else int(code),
        oom_killed=bool(state.get("OOMKilled")),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        name=str(attrs.get("Name", "")).lstrip("/"),
        addresses={str(name): str(net.get("IPAddress") or "") for name, net in
                   ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).items()},
    )


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
