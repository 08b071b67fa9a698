"""Session volumes on the real engine: created labelled, owned by the run's uid, listed.

A session volume holds what earlier runs wrote, so its content is hostile. Its root must be
0700 and owned by the uid of the run that mounts it (the project's owner, which may change),
and chowning needs CAP_CHOWN, which no agent container has. A throwaway container does it:
root with only CHOWN, FOWNER and DAC_READ_SEARCH, no network, a read-only root file system,
no-new-privileges, and the volume as its only mount, so even a symlink it followed could
reach nothing but its own read-only image (``chown -R -h`` follows none anyway).

A random incarnation label, set when the volume is created, tells a volume apart from one
removed and created again under the same name: the fix runs once per incarnation and owner
in a process, not on every run (a warm run never waits for it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from functools import partial

import docker
import requests
from docker.errors import DockerException
from docker.types import Mount as DockerMount

from orchestrator.errors import ContainerFailed, SandboxError
from orchestrator.runtime.base import MANAGED_LABEL
from orchestrator.runtime.docker_calls import Gone, call

log = logging.getLogger(__name__)

INCARNATION_LABEL = "ad-sandbox.volume-id"
"""A random id given when the volume is created; an existing volume keeps its own."""
MOUNT = "/v"
FIX_SCRIPT = f'chown -R -h -- "$1" {MOUNT} && chmod 0700 {MOUNT}'
"""``sh -c`` script: $1 is uid:gid. ``-h``: a symlink's own owner changes, never its target."""
FIX_CAPS = ["CHOWN", "FOWNER", "DAC_READ_SEARCH"]
FIX_DEADLINE_S = 120.0
_LABEL_OWNER = "ad-sandbox.owner-pid"
_LABEL_LEASE = "ad-sandbox.lease-until"


class VolumeKeeper:
    """Prepares and lists labelled volumes for one :class:`DockerRuntime`."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api
        self._owned: dict[tuple[str, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def prepare(self, name: str, *, labels: dict[str, str], image: str, uid: int,
                gid: int) -> None:
        """See :meth:`orchestrator.runtime.base.Runtime.prepare_volume`."""
        wanted = {**labels, MANAGED_LABEL: "1", INCARNATION_LABEL: uuid.uuid4().hex}
        attrs = call("create volume", partial(self._api.create_volume, name, labels=wanted))
        incarnation = str((attrs.get("Labels") or {}).get(INCARNATION_LABEL) or "")
        key = (name, incarnation)
        with self._lock:
            if incarnation and self._owned.get(key) == (uid, gid):
                return
        self._fix(name, labels=labels, image=image, uid=uid, gid=gid)
        with self._lock:
            self._owned[key] = (uid, gid)

    def list(self, label_filter: dict[str, str]) -> list[str]:
        """See :meth:`orchestrator.runtime.base.Runtime.list_volumes`."""
        wanted = [f"{MANAGED_LABEL}=1", *(f"{k}={v}" for k, v in label_filter.items())]
        listed = call("list volumes", partial(self._api.volumes, filters={"label": wanted}))
        return sorted(str(v["Name"]) for v in listed.get("Volumes") or [])

    def forget(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._owned if k[0] == name]:
                del self._owned[key]

    def _fix(self, name: str, *, labels: dict[str, str], image: str, uid: int,
             gid: int) -> None:
        host_config = self._api.create_host_config(
            mounts=[DockerMount(target=MOUNT, source=name, type="volume")],
            read_only=True,
            cap_drop=["ALL"],
            cap_add=FIX_CAPS,
            security_opt=["no-new-privileges"],
            network_mode="none",
            pids_limit=32,
            mem_limit=64 * 1024 * 1024,
            privileged=False,
        )
        create = partial(
            self._api.create_container,
            image,
            command=["/bin/sh", "-c", FIX_SCRIPT, "sh", f"{uid}:{gid}"],
            user="0:0",
            entrypoint=[],
            labels={**labels, MANAGED_LABEL: "1", _LABEL_OWNER: str(os.getpid()),
                    _LABEL_LEASE: str(int(time.time() + FIX_DEADLINE_S))},
            host_config=host_config,
        )
        created = call("create volume helper", create, image=image)
        helper = str(created["Id"])
        try:
            call("start volume helper", partial(self._api.start, helper), container=helper)
            code = self._wait(helper)
            if code != 0:
                output = self._api.logs(helper, stdout=True, stderr=True, tail=20)
                raise ContainerFailed(
                    f"could not give volume {name} to uid {uid}: exit {code}: "
                    f"{output.decode('utf-8', errors='replace').strip()[-500:]}",
                    hint=f"Remove the volume (`docker volume rm {name}`; its sessions are "
                    "lost) and run again.",
                    container=helper, image=image,
                )
        finally:
            try:
                call("remove volume helper",
                     partial(self._api.remove_container, helper, force=True))
            except Gone:
                pass
            except SandboxError as exc:
                log.warning("volume helper %s not removed: %s", helper[:12], exc.message)
        log.info("volume %s: root 0700, owned by %d:%d", name, uid, gid)

    def _wait(self, helper: str) -> int | None:
        try:
            result = self._api.wait(helper, timeout=int(FIX_DEADLINE_S))
        except (DockerException, requests.RequestException) as exc:
            raise ContainerFailed(
                f"the volume helper {helper[:12]} did not finish within {FIX_DEADLINE_S:.0f}s",
                hint="The volume may hold a huge number of files; remove it and run again.",
                container=helper,
            ) from exc
        code = result.get("StatusCode")
        return int(code) if code is not None else None
