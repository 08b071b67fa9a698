"""Host-side access to files the agent controls, without following its symlinks.

Everything under a project directory may have been written by the agent, which is the
adversary: ``CLAUDE.md`` may be a symlink to ``/etc/shadow``, ``README.md`` a FIFO that
blocks a reader forever, ``.mcp.json`` a gigabyte. So every read here

- opens the project root once, then each component below it with ``O_NOFOLLOW`` relative to
  its parent's descriptor: a symlink anywhere below the root is never followed, not even one
  pointing inside the project (the simple rule leaves nothing to get wrong);
- reads only regular files, opened ``O_NONBLOCK`` and checked with ``fstat`` on the open
  descriptor (not the path, which could change in between);
- stops at a size limit given by the caller.

:func:`open_directory` walks an absolute path from ``/`` the same way, for the check that an
agent directory is still the one registered (:mod:`orchestrator.run.dirpin`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RefusedPath(OSError):
    """A path was not followed or not read: a symlink, not a regular file, or too large.

    An :class:`OSError`, so code that treats an unreadable file as absent does so here too;
    code that must say why converts it to an error of :mod:`orchestrator.errors`.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.EPERM, reason, path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _parts(relative: str) -> list[str]:
    """The components of a path below a root; refuses absolute paths and ``..``."""
    pure = PurePosixPath(relative)
    parts = [p for p in pure.parts if p not in ("", ".")]
    if pure.is_absolute() or ".." in parts or not parts:
        raise RefusedPath(relative, "not a plain relative path below the project")
    return parts


def _open_component(name: str, parent_fd: int, flags: int, shown: str) -> int:
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except OSError as exc:
        # O_NOFOLLOW on a symlink fails with ELOOP; O_DIRECTORY on one with ENOTDIR.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(name, parent_fd):
            raise RefusedPath(shown, "is a symlink (not followed)") from None
        raise


def _is_symlink(name: str, parent_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=parent_fd).st_mode)
    except OSError:
        return False


@contextmanager
def open_directory(path: str | Path) -> Iterator[int]:
    """A descriptor of the absolute directory ``path``, walked from ``/`` one component at a
    time with ``O_NOFOLLOW``: raises :class:`RefusedPath` naming the first symlink."""
    text = os.path.normpath(os.fspath(path))
    if not os.path.isabs(text):
        raise RefusedPath(text, "is not an absolute path")
    fd = os.open("/", _DIR_FLAGS)
    try:
        walked = ""
        for part in PurePosixPath(text).parts[1:]:
            walked = f"{walked}/{part}"
            child = _open_component(part, fd, _DIR_FLAGS, walked)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_root(root: str | Path) -> Iterator[int]:
    """A descriptor of a project root as configured (the user chose it, symlinks and all)."""
    fd = os.open(os.fspath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def read_file(root: str | Path, relative: str, *, limit: int) -> bytes | None:
    """The bytes of regular file ``relative`` below ``root``, or None when it does not exist.

    Raises :class:`RefusedPath` when a component is a symlink, the file is not a regular file
    or it holds more than ``limit`` bytes; :class:`OSError` for other failures.
    """
    parts = _parts(relative)
    try:
        with open_root(root) as root_fd:
            return _read_below(root_fd, parts, relative, limit)
    except FileNotFoundError:
        return None


def read_head(root: str | Path, relative: str, *, limit: int) -> bytes | None:
    """Like :func:`read_file`, but a larger file yields its first ``limit`` bytes."""
    parts = _parts(relative)
    try:
        with open_root(root) as root_fd:
            return _read_below(root_fd, parts, relative, limit, truncate=True)
    except FileNotFoundError:
        return None


def _read_below(root_fd: int, parts: list[str], shown: str, limit: int,
                *, truncate: bool = False) -> bytes:
    fd = os.dup(root_fd)
    try:
        for index, part in enumerate(parts[:-1]):
            child = _open_component(part, fd, _DIR_FLAGS, "/".join(parts[: index + 1]))
            os.close(fd)
            fd = child
        file_fd = _open_component(parts[-1], fd, _FILE_FLAGS, shown)
    finally:
        os.close(fd)
    try:
        info = os.fstat(file_fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedPath(shown, "is not a regular file")
        if info.st_size > limit and not truncate:
            raise RefusedPath(shown, f"is larger than {limit} bytes")
        chunks: list[bytes] = []
        left = limit + (0 if truncate else 1)
        while left > 0:
            chunk = os.read(file_fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(file_fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew after the fstat
        raise RefusedPath(shown, f"is larger than {limit} bytes")
    return data


def list_entries(root: str | Path) -> dict[str, str]:
    """The names directly in ``root`` → ``file``, ``dir`` or ``other``; symlinks left out.

    Only the directory's own entries are looked at (``lstat`` semantics): nothing is opened.
    """
    entries: dict[str, str] = {}
    with open_root(root) as root_fd, os.scandir(root_fd) as scan:
        for entry in scan:
            if entry.is_symlink():
                continue
            if entry.is_file(follow_symlinks=False):
                entries[entry.name] = "file"
            elif entry.is_dir(follow_symlinks=False):
                entries[entry.name] = "dir"
            else:
                entries[entry.name] = "other"
    return entries
