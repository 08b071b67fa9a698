"""The project's state for the cache key, read on the host without trusting the project.

The agent writes its project directory, so everything in it is hostile input here (SPEC §4,
threat model). This module runs nothing and reads no configuration: no ``git`` process, so no
fsmonitor, hook, filter, pager or include the agent planted can run on the host. It reads
three things, each opened relative to an already-open directory with ``O_NOFOLLOW`` so no
symlink is followed, each checked to be a regular file of bounded size:

- ``.git/HEAD`` and the ref it names (a loose ref or a line of ``packed-refs``): a commit
  changes the key;
- the bytes of ``.git/index``: ``git add`` changes the key;
- the stat of every entry of the working tree except the top ``.git`` (path, type, mode,
  size, mtime, ctime, inode): any edit, tracked or not, in git or not, changes the key.

Anything odd (``.git`` a file, a gitfile or a symlink, a FIFO where a file should be, a ref
name that escapes, too many entries, too slow, any OS error) raises :class:`StateUnknown`:
the caller must then not use the cache at all, since a constant stand-in would give stale
hits.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 50_000
MAX_SECONDS = 2.0
MAX_SMALL_FILE = 4096  # HEAD and loose refs
MAX_PACKED_REFS = 32 << 20
MAX_INDEX = 256 << 20
MAX_SYMREF_DEPTH = 5
MAX_DEPTH = 128  # one open descriptor per level
_CHUNK = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OID = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")
# A ref name as git writes it: no "..", no component starting with ".", no ".lock" end.
_REF_COMPONENT = re.compile(r"[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*")
_VERSION = b"ad-sandbox project state v1\0"

_Feed = Callable[[bytes], object]


class StateUnknown(Exception):
    """The project's state cannot be read safely; the request must not use the cache."""


@dataclass(frozen=True)
class Limits:
    """How much the probe reads before it gives up (the state is then unknown)."""

    max_entries: int = MAX_ENTRIES
    max_seconds: float = MAX_SECONDS


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.entries = 0

    def tick(self, entries: int = 0) -> None:
        self.entries += entries
        if self.entries > self.limits.max_entries:
            raise StateUnknown(f"more than {self.limits.max_entries} entries")
        if time.monotonic() > self.deadline:
            raise StateUnknown(f"reading took longer than {self.limits.max_seconds}s")


def fingerprint(directory: Path, limits: Limits | None = None) -> str:
    """A hex digest of the project's git HEAD, index and working tree; see the module doc.

    Raises :class:`StateUnknown` when the state cannot be read safely within ``limits``.
    """
    budget = _Budget(limits or Limits())
    digest = hashlib.sha256(_VERSION)
    try:
        # The configured path itself is the user's (the agent cannot reach above its mount).
        root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateUnknown(f"cannot open the project directory: {exc.strerror}") from exc
    try:
        _git_state(root, digest.update, budget)
        _tree_state(root, digest.update, budget)
    except OSError as exc:
        raise StateUnknown(f"{type(exc).__name__}: {exc.strerror}") from exc
    finally:
        os.close(root)
    return digest.hexdigest()


# ---- git: HEAD, its ref, the index ---------------------------------------------------------


def _git_state(root: int, feed: _Feed, budget: _Budget) -> None:
    try:
        info = os.stat(".git", dir_fd=root, follow_symlinks=False)
    except FileNotFoundError:
        feed(b"git:none\0")
        return
    if not stat.S_ISDIR(info.st_mode):
        raise StateUnknown("`.git` is not a plain directory (a gitfile or a symlink)")
    git = os.open(".git", _DIR_FLAGS, dir_fd=root)
    try:
        feed(b"git:head\0" + _resolve_head(git, budget) + b"\0")
        index = hashlib.sha256()
        if _read_regular(git, "index", MAX_INDEX, index.update, budget):
            feed(b"git:index\0" + index.digest())
        else:
            feed(b"git:no-index\0")
    finally:
        os.close(git)


def _resolve_head(git: int, budget: _Budget) -> bytes:
    """The refs ``HEAD`` goes through and the commit id, or ``unborn`` before a commit."""
    head = _small(git, "HEAD", budget)
    if head is None:
        raise StateUnknown("`.git/HEAD` is missing")
    chain = b""
    for _ in range(MAX_SYMREF_DEPTH):
        value = head.strip()
        if _OID.fullmatch(value):
            return chain + value
        if not value.startswith(b"ref: "):
            raise StateUnknown("a ref holds neither a commit id nor a ref")
        ref = _ref_name(value[5:])
        chain += ref.encode() + b" -> "
        loose = _loose_ref(git, ref, budget)
        if loose is None:
            packed = _packed_ref(git, ref, budget)
            return chain + (packed if packed is not None else b"unborn")
        head = loose
    raise StateUnknown(f"more than {MAX_SYMREF_DEPTH} symbolic refs in a row")


def _ref_name(raw: bytes) -> str:
    try:
        name = raw.strip().decode("ascii")
    except UnicodeDecodeError as exc:
        raise StateUnknown("a ref name is not ASCII") from exc
    parts = name.split("/")
    if (parts[0] != "refs" or len(parts) < 2
            or not all(_REF_COMPONENT.fullmatch(p) and not p.endswith(".lock")
                       for p in parts[1:])):
        raise StateUnknown(f"unexpected ref name {name[:100]!r}")
    return name


def _loose_ref(git: int, ref: str, budget: _Budget) -> bytes | None:
    """The loose ref file's content; ``None`` when there is none (it may be packed)."""
    *folders, name = ref.split("/")
    fd = os.dup(git)
    try:
        for folder in folders:
            try:
                child = os.open(folder, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return None
            os.close(fd)
            fd = child
        return _small(fd, name, budget)
    finally:
        os.close(fd)


def _packed_ref(git: int, ref: str, budget: _Budget) -> bytes | None:
    chunks: list[bytes] = []
    if not _read_regular(git, "packed-refs", MAX_PACKED_REFS, chunks.append, budget):
        return None
    wanted = ref.encode()
    for line in b"".join(chunks).splitlines():
        oid, _, name = line.partition(b" ")
        if name == wanted and _OID.fullmatch(oid):
            return oid
    return None


def _small(folder: int, name: str, budget: _Budget) -> bytes | None:
    chunks: list[bytes] = []
    if not _read_regular(folder, name, MAX_SMALL_FILE, chunks.append, budget):
        return None
    return b"".join(chunks)


def _read_regular(folder: int, name: str, limit: int, sink: _Feed,
                  budget: _Budget) -> bool:
    """Feed ``folder/name``'s bytes to ``sink``; ``False`` when it does not exist.

    Only a regular file is read (checked before and after opening, without following a
    symlink and without blocking on a FIFO), and only up to ``limit`` bytes.
    """
    try:
        before = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(before.st_mode):
        raise StateUnknown(f"`{name}` is not a regular file")
    if before.st_size > limit:
        raise StateUnknown(f"`{name}` is larger than {limit} bytes")
    fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_ino != before.st_ino:
            raise StateUnknown(f"`{name}` changed while it was read")
        total = 0
        while block := os.read(fd, _CHUNK):
            total += len(block)
            if total > limit:
                raise StateUnknown(f"`{name}` is larger than {limit} bytes")
            sink(block)
            budget.tick()
    finally:
        os.close(fd)
    return True


# ---- the working tree ------------------------------------------------------------------


def _tree_state(root: int, feed: _Feed, budget: _Budget) -> None:
    """Every entry's stat, depth first in name order, without following any symlink.

    One open directory per level (at most ``MAX_DEPTH``), each opened with ``O_NOFOLLOW``
    relative to its parent and checked to be the directory that was listed.
    """
    stack: list[tuple[int, bytes, Iterator[tuple[str, int]]]] = []
    try:
        stack.append((os.dup(root), b"", iter(())))
        stack[-1] = (stack[-1][0], b"", iter(_list(stack[-1][0], b"", feed, budget)))
        while stack:
            folder, prefix, subfolders = stack[-1]
            following = next(subfolders, None)
            if following is None:
                stack.pop()
                os.close(folder)
                continue
            if len(stack) >= MAX_DEPTH:
                raise StateUnknown(f"directories nested deeper than {MAX_DEPTH}")
            name, inode = following
            child = os.open(name, _DIR_FLAGS, dir_fd=folder)
            stack.append((child, prefix + os.fsencode(name) + b"/", iter(())))
            if os.fstat(child).st_ino != inode:
                raise StateUnknown("a directory changed while it was read")
            stack[-1] = (child, stack[-1][1], iter(_list(child, stack[-1][1], feed, budget)))
    finally:
        for folder, _, _ in stack:
            os.close(folder)


def _list(folder: int, prefix: bytes, feed: _Feed, budget: _Budget) -> list[tuple[str, int]]:
    """Hash ``folder``'s entries; return its subdirectories (name, inode) to descend into."""
    names = []
    with os.scandir(folder) as scan:
        for entry in scan:  # counted as read, so a huge directory stops early
            names.append(entry.name)
            if len(names) % 1024 == 0:
                budget.tick(1024)
    budget.tick(len(names) % 1024)
    names.sort()
    folders = []
    for name in names:
        if not prefix and name == ".git":
            continue  # read above, as git state
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        path = prefix + os.fsencode(name)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            # A directory's times move when a tool makes and removes a scratch file; its
            # entries are what matters, and those are hashed on their own.
            feed(b"d\0%s\0%o\n" % (path, mode))
            folders.append((name, info.st_ino))
        else:
            feed(b"f\0%s\0%o\0%d\0%d\0%d\0%d\n" % (
                path, mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
    budget.tick()
    return folders
