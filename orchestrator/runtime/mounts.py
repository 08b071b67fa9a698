"""How a :class:`~orchestrator.runtime.base.Mount` becomes an engine mount: nosuid and nodev
wherever the engine can apply them.

A plain Docker bind mount takes no ``nosuid``/``nodev``. The ``local`` volume driver can bind a
host directory with mount flags (``type=none``, ``o=bind,...``, ``device=PATH``), so a
read-only project is mounted through an anonymous volume of that driver: ``ro,nosuid,nodev``
on the host side, and the container's bind of it keeps those flags (checked in
``/proc/self/mountinfo``). The volume is anonymous, so removing the container with its
volumes (what :meth:`DockerRuntime.remove` does) removes it; it carries the managed and
workspace labels, so the reaper finds one left dangling by a container removed another way.

Facts checked on Docker 20.10 (Debian) that shape this:

- The driver applies flags besides ``bind`` only through a second, read-only remount: with
  ``o=bind,nosuid,nodev`` (no ``ro``) the mount comes out ``rw`` without ``nosuid``. So a
  writable project stays a plain bind: inside, no-new-privileges and no capabilities make a
  setuid file or a device node useless; on the host, the run's user is never root and the
  setid bits are cleared after each run (:mod:`orchestrator.privilege`).
- The engine refuses ``ReadOnly`` on an anonymous volume; read-only comes from ``o=ro``.
- ``NoCopy`` keeps the engine from copying the image's ``/workspace`` into the project.
- Removing such a volume unmounts it first and deletes only the empty mount point; with a
  read-only mount nothing below it could be deleted even if it were still mounted.
"""

from __future__ import annotations

from collections.abc import Sequence

from docker.types import DriverConfig
from docker.types import Mount as DockerMount

from orchestrator.runtime.base import MANAGED_LABEL, WORKSPACE_VOLUME_LABEL, Mount

_HARDENED = "bind,nosuid,nodev,ro"


def engine_mounts(mounts: Sequence[Mount]) -> list[DockerMount]:
    """The engine's mounts for ``mounts``, hardened where the engine can."""
    return [_engine_mount(m) for m in mounts]


def _engine_mount(mount: Mount) -> DockerMount:
    if mount.kind == "bind" and mount.read_only:
        return DockerMount(
            target=mount.target,
            source=None,
            type="volume",
            read_only=False,  # refused for anonymous volumes; "ro" below makes it read-only
            no_copy=True,
            labels={MANAGED_LABEL: "1", WORKSPACE_VOLUME_LABEL: "1"},
            driver_config=DriverConfig(
                "local", {"type": "none", "o": _HARDENED, "device": mount.source}
            ),
        )
    return DockerMount(
        target=mount.target, source=mount.source, type=mount.kind, read_only=mount.read_only
    )
