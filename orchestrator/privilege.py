"""No root in a run, and no setuid/setgid program left behind by one (issue 7).

Two rules keep an agent from handing local users a privilege through its project directory:

- **The run's user is never root.** It is ``agents.NAME.user`` when set, otherwise the owner
  of the project directory, so the files the agent writes belong to whoever owns the project.
  Where that owner (or its group) is root, the dedicated unprivileged id
  :data:`UNPRIVILEGED_ID` takes its place: such a run can read the project but can write only
  where that id may (see the README's security section).
- **No setuid/setgid file survives a run.** A non-root agent can still ``chmod u+s`` a file it
  owns, and the bit holds on the host, where the project is not mounted ``nosuid``: any local
  user who can reach the file would run it as the run's user. After each run of a writable
  project, :func:`strip_setid_bits` clears both bits on every regular file below the project.
  It never follows a symlink: every directory is opened ``O_NOFOLLOW`` relative to its
  parent's descriptor and every change goes through a descriptor of the file itself.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import anyio

log = logging.getLogger(__name__)

UNPRIVILEGED_ID = 65532
"""The uid (and gid) a run gets where the project's owner (or group) is root."""
MAX_ID = 2**32 - 2
_USER = re.compile(r"^(\d{1,10})(?::(\d{1,10}))?$")
_SETID = stat.S_ISUID | stat.S_ISGID
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_PATH opens without needing read permission and without any side effect of an open.
_HANDLE_FLAGS = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK) | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 128
"""Deeper directories are not scanned but closed to group and others (one descriptor a level)."""


def parse_user(value: str) -> tuple[int, int]:
    """``"UID[:GID]"`` → ``(uid, gid)``; GID defaults to UID. Raises ValueError for root."""
    match = _USER.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not UID[:GID] with numeric ids, like 1000 or 1000:1000")
    uid = int(match.group(1))
    gid = int(match.group(2)) if match.group(2) is not None else uid
    if uid == 0 or gid == 0:
        raise ValueError(
            f"{value!r} would run the agent as root (id 0), which is never allowed; "
            f"use the project owner's ids, or {UNPRIVILEGED_ID}:{UNPRIVILEGED_ID}"
        )
    if uid > MAX_ID or gid > MAX_ID:
        raise ValueError(f"{value!r}: ids must be at most {MAX_ID}")
    return uid, gid


def run_ids(configured: str | None, owner_uid: int, owner_gid: int) -> tuple[int, int]:
    """The ``(uid, gid)`` of a run: the configured user, else the directory's owner with
    root (0) replaced by :data:`UNPRIVILEGED_ID`."""
    if configured is not None:
        return parse_user(configured)
    return owner_uid or UNPRIVILEGED_ID, owner_gid or UNPRIVILEGED_ID


@dataclass
class StripReport:
    """What :func:`strip_setid_bits` did; paths are relative to the project."""

    cleared: list[str] = field(default_factory=list)
    """Files whose setuid/setgid bits were cleared."""
    closed: list[str] = field(default_factory=list)
    """Directories not scanned (too deep, unreadable) whose group/other access was removed."""
    failed: list[str] = field(default_factory=list)
    """Entries that could not be checked or changed, with the reason."""


def strip_setid_bits(root: Path) -> StripReport:
    """Clear setuid/setgid on every regular file below ``root``, following no symlink.

    ``root`` itself is opened as configured (the engine mounted that same path); nothing
    below it is followed. Never raises for what it finds below the root; an unreadable root
    raises OSError.
    """
    report = StripReport()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _scan(root_fd, "", 0, report)
    finally:
        os.close(root_fd)
    return report


def _scan(dir_fd: int, where: str, depth: int, report: StripReport) -> None:
    """Depth-first below ``dir_fd``: one open descriptor per level, so at most MAX_DEPTH."""
    try:
        entries = list(os.scandir(dir_fd))
    except OSError as exc:
        report.failed.append(f"{where or '.'}: {exc.strerror}")
        return
    for entry in entries:
        path = f"{where}/{entry.name}" if where else entry.name
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError as exc:
            report.failed.append(f"{path}: {exc.strerror}")
            continue
        if stat.S_ISDIR(info.st_mode):
            _descend(dir_fd, entry.name, path, depth + 1, report)
        elif stat.S_ISREG(info.st_mode) and info.st_mode & _SETID:
            _clear(dir_fd, entry.name, path, report)


def _descend(parent_fd: int, name: str, path: str, depth: int, report: StripReport) -> None:
    if depth > MAX_DEPTH:
        _close_off(parent_fd, name, path, report)
        return
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM) and _make_readable(parent_fd, name):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            except OSError:
                _close_off(parent_fd, name, path, report)
                return
        elif exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return  # replaced since the listing: not a directory any more, nothing to do
        else:
            _close_off(parent_fd, name, path, report)
            return
    try:
        _scan(fd, path, depth, report)
    finally:
        os.close(fd)


def _clear(parent_fd: int, name: str, path: str, report: StripReport) -> None:
    try:
        fd = os.open(name, _HANDLE_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        report.failed.append(f"{path}: {exc.strerror}")
        return
    try:
        # The descriptor, not the name, is checked and changed: what was listed may have
        # been swapped for a symlink in between (then fstat says so and nothing changes).
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_mode & _SETID:
            _chmod_fd(fd, stat.S_IMODE(info.st_mode) & ~_SETID)
            report.cleared.append(path)
    except OSError as exc:
        report.failed.append(f"{path}: {exc.strerror}")
    finally:
        os.close(fd)


def _make_readable(parent_fd: int, name: str) -> bool:
    """Give the owner rwx on a directory it owns but locked itself out of (mode 0o011...)."""
    try:
        fd = os.open(name, _HANDLE_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        _chmod_fd(fd, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _close_off(parent_fd: int, name: str, path: str, report: StripReport) -> None:
    """A directory not scanned: nothing below it stays reachable for group and others."""
    try:
        fd = os.open(name, _HANDLE_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        report.failed.append(f"{path}: {exc.strerror}")
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            _chmod_fd(fd, stat.S_IMODE(info.st_mode) & ~(stat.S_IRWXG | stat.S_IRWXO))
            report.closed.append(path)
    except OSError as exc:
        report.failed.append(f"{path}: {exc.strerror}")
    finally:
        os.close(fd)


def _chmod_fd(fd: int, mode: int) -> None:
    if hasattr(os, "O_PATH"):
        # fchmod() refuses an O_PATH descriptor; its /proc link reaches the same inode.
        os.chmod(f"/proc/self/fd/{fd}", mode)
    else:
        os.fchmod(fd, mode)


def scrub_project(agent_name: str, root: Path) -> StripReport | None:
    """:func:`strip_setid_bits` after a run, logging what it found; None if it could not run."""
    try:
        report = strip_setid_bits(root)
    except OSError as exc:
        log.warning("agent %s: could not check %s for setuid files: %s", agent_name, root, exc)
        return None
    if report.cleared:
        log.warning("agent %s: cleared setuid/setgid on %d file(s) it left in %s: %s",
                    agent_name, len(report.cleared), root, ", ".join(report.cleared[:10]))
    if report.closed:
        log.warning("agent %s: directories not scanned, closed to group and others: %s",
                    agent_name, ", ".join(report.closed[:10]))
    if report.failed:
        log.warning("agent %s: setuid check incomplete: %s", agent_name,
                    "; ".join(report.failed[:10]))
    return report


async def scrub_after_run(agent_name: str, root: Path, *, mount: str) -> None:
    """After a run's container is gone (no process of it can race the walk): clear the setid
    bits it may have left in a writable project."""
    if mount == "ro":
        return  # mounted read-only: it could not chmod anything
    await anyio.to_thread.run_sync(scrub_project, agent_name, root)
