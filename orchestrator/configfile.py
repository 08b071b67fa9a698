"""Reading and writing the agents file (SPEC §3).

Errors name the file, the line, the key path and the bad value. Writes are atomic
(temp file + rename), mode 0600, under a file lock beside the file. :class:`ConfigSnapshot`
re-reads on change and keeps the last good config when an edit breaks the file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock
from pydantic import ValidationError

from orchestrator.config import CONFIG_DIR, Config
from orchestrator.configerrors import describe_validation_error
from orchestrator.configyaml import BoundedLoader, compose
from orchestrator.errors import ConfigError
from orchestrator.paths import config_path

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 30.0
"""Seconds to wait for another writer; a writer holds the lock for milliseconds."""


def load_config(path: Path | None = None) -> Config:
    """The config at ``path`` (default :func:`config_path`); a missing file is an empty config.
    Relative agent directories in it are relative to the file's directory.

    Raises :class:`ConfigError` naming the file, line, key path and bad value.
    """
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint=f"Check the permissions of {path}.",
            path=str(path),
        ) from exc
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    """Validate YAML ``text`` read from ``path`` (named in errors; relative agent directories
    are relative to its directory)."""
    node, data = _compose(text, path)
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path.name} line 1: the top level must be a mapping of settings, agents, groups",
            hint=f"Fix {path} and try again (see `ad-sandbox init` for an example).",
            path=str(path),
        )
    # An empty section (`agents:` with nothing below) means "none", not "wrong type".
    data = {key: value for key, value in data.items() if value is not None}
    try:
        return Config.model_validate(data, context=_context(path))
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, node=node, source=path.name),
            hint=f"Fix {path} and try again (`ad-sandbox doctor` checks it).",
            path=str(path),
        ) from None


def validate_config(data: dict[str, Any]) -> Config:
    """Build a Config from plain data (CLI edits); errors name the key path and value."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, node=None, source=None),
            hint="Fix the value and run the command again.",
        ) from None


def dump_config(config: Config) -> str:
    """Readable YAML holding only the keys that were set, so it reloads to an equal Config."""
    data = config.model_dump(mode="json", exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(config: Config, path: Path | None = None) -> None:
    """Write ``config`` atomically (0600, parent 0700) under the file lock."""
    path = path or config_path()
    with _lock(path):
        _write(config, path)


def update_config(fn: Callable[[Config], Config], path: Path | None = None) -> Config:
    """Read, apply ``fn``, write — all under the lock, so concurrent updates are not lost."""
    path = path or config_path()
    with _lock(path):
        new = fn(load_config(path))
        _write(new, path)
    # As the next load will read it: relative directories anchored at this file.
    return Config.model_validate(new.model_dump(mode="json", exclude_unset=True),
                                 context=_context(path))


class ConfigSnapshot:
    """The current config, re-read when the file's mtime, size or inode changes.

    A broken edit keeps the last good config and sets :attr:`warning` to the reason;
    the first load failing raises :class:`ConfigError`.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()
        self.warning: str | None = None
        self._guard = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._config: Config | None = None

    def get(self) -> Config:
        with self._guard:
            stamp = self._stat()
            if self._config is not None and stamp == self._stamp:
                return self._config
            try:
                config = load_config(self.path)
            except ConfigError as exc:
                if self._config is None:
                    raise
                self._stamp = stamp
                self.warning = f"kept the last good config: {exc.one_line()}"
                log.warning("%s", self.warning)
                return self._config
            self._config, self._stamp, self.warning = config, stamp, None
            return config

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, -1, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)


def _context(path: Path) -> dict[str, Path]:
    """Relative agent directories in the file at ``path`` are relative to its directory."""
    return {CONFIG_DIR: path.expanduser().absolute().parent}


def _compose(text: str, path: Path) -> tuple[yaml.Node | None, Any]:
    """Parse once into nodes (for line numbers) and Python data."""
    loader = BoundedLoader(text)
    try:
        # Budgets and duplicates are checked on the node tree, before anything walks the data.
        node = compose(loader, path)
        if node is not None:
            _reject_duplicates(node, path, ())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(
            f"{path.name}{where}: malformed YAML: {reason}",
            hint=f"Fix the YAML syntax in {path} and try again.",
            path=str(path),
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path.name}: malformed YAML: {exc}",
            hint=f"Fix the YAML syntax in {path} and try again.",
            path=str(path),
        ) from None
    finally:
        loader.dispose()
    return node, data


def _reject_duplicates(node: yaml.Node, path: Path, where: tuple[str, ...]) -> None:
    # PyYAML silently keeps the last of two equal keys; a user editing by hand
    # would then wonder why the first one is ignored.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                dotted = ".".join((*where, name))
                raise ConfigError(
                    f"{path.name} line {key.start_mark.line + 1}: {dotted}: duplicate key",
                    hint=f"Keep one of the two {name!r} entries in {path}.",
                    path=str(path),
                )
            seen.add(name)
            _reject_duplicates(value, path, (*where, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicates(item, path, (*where, str(index)))


def _lock(path: Path) -> FileLock:
    _ensure_dir(path.parent)
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT, mode=0o600)


def _ensure_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write(config: Config, path: Path) -> None:
    text = dump_config(config)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
