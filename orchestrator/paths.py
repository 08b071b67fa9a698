"""Where ad-sandbox keeps its configuration and state.

The agents file in use is the first of:

1. ``--config PATH`` (the CLI sets ``$AD_SANDBOX_CONFIG`` for itself and its children);
2. ``$AD_SANDBOX_CONFIG``;
3. ``ad-sandbox.yaml`` in the current directory;
4. ``ad-sandbox.yaml`` in the git root of the current directory: the nearest directory
   above it holding ``.git`` (found on the file system; git is never run);
5. the user file ``~/.config/ad-sandbox/agents.yaml``, also where ``init`` writes when
   nothing else exists.

A project file (3, 4) may be spelled ``ad-sandbox.yml``; both spellings in the directory
that would be read is refused (:func:`locate_config`) rather than one silently ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

CONFIG_ENV = "AD_SANDBOX_CONFIG"
STATE_ENV = "AD_SANDBOX_STATE_DIR"
PROJECT_FILES = ("ad-sandbox.yaml", "ad-sandbox.yml")
"""Names of a project's agents file, the preferred one first."""


@dataclass(frozen=True)
class ConfigLocation:
    """The agents file in use, why, and the other existing candidates it shadows."""

    path: Path
    source: str
    ignored: tuple[Path, ...] = ()

    def describe(self) -> str:
        """``PATH (source)`` plus the ignored candidates, for ``doctor`` and ``--verbose``."""
        text = f"{self.path} ({self.source})"
        if self.ignored:
            text += "; ignored: " + ", ".join(map(str, self.ignored))
        return text


def user_config_path() -> Path:
    """The user file: ``$XDG_CONFIG_HOME/ad-sandbox/agents.yaml`` (default ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ad-sandbox" / "agents.yaml"


def config_path() -> Path:
    """The agents file in use (see the module docstring for the order).

    Raises :class:`ConfigError` when a directory holds both project file spellings.
    """
    return locate_config().path


def locate_config(cwd: Path | None = None) -> ConfigLocation:
    """Find the agents file from ``cwd`` (default: the current directory)."""
    user = user_config_path()
    override = os.environ.get(CONFIG_ENV)
    if override:
        chosen = Path(override).expanduser()
        others = [p for d in _project_dirs(cwd) for p in _present(d)]
        others += [user] if user.is_file() else []
        return ConfigLocation(chosen, f"set by --config or {CONFIG_ENV}", _besides(chosen, others))
    sources = ("found in the current directory", "found at the git root")
    present: list[tuple[Path, str]] = []
    for directory, source in zip(_project_dirs(cwd), sources, strict=False):
        files = _present(directory)
        if len(files) > 1 and not present:  # the one that would be read is ambiguous
            raise _both(directory, files)
        present += [(path, source) for path in files]
    if user.is_file():
        present.append((user, "the user file"))
    if not present:
        return ConfigLocation(user, "the user file")
    (chosen, source), rest = present[0], present[1:]
    return ConfigLocation(chosen, source, tuple(path for path, _ in rest))


def _project_dirs(cwd: Path | None) -> list[Path]:
    """The current directory, then its git root when that is another directory."""
    try:
        start = (cwd or Path.cwd()).absolute()
    except FileNotFoundError:  # the current directory was removed: no project
        return []
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return [start] if directory == start else [start, directory]
    return [start]


def _present(directory: Path) -> list[Path]:
    return [directory / name for name in PROJECT_FILES if (directory / name).is_file()]


def _both(directory: Path, files: list[Path]) -> ConfigError:
    first, second = files
    return ConfigError(
        f"two agents files in {directory}: {first.name} and {second.name}; ad-sandbox would "
        f"read {first.name}, so {second.name} would be silently ignored",
        hint=f"Keep one: merge {second.name} into {first.name} and delete it, or name the "
        "file to use with `ad-sandbox --config PATH ...`.",
        path=str(first), ignored=str(second),
    )


def _besides(chosen: Path, others: list[Path]) -> tuple[Path, ...]:
    try:
        return tuple(p for p in others if not (chosen.exists() and p.samefile(chosen)))
    except OSError:
        return tuple(others)


def stored_directory(raw: str, resolved: str, config_file: Path) -> str:
    """How to write directory ``raw`` (resolved to ``resolved``) into ``config_file``.

    A relative ``raw`` lying below the file's directory is stored relative to the file
    (``./proj``), so a repository can carry its agents file; anything else absolute.
    """
    if Path(raw).expanduser().is_absolute():
        return resolved
    base = os.path.realpath(config_file.expanduser().absolute().parent)
    if not Path(resolved).is_relative_to(base):
        return resolved
    relative = os.path.relpath(resolved, base)
    return "." if relative == "." else f"./{relative}"


def state_dir() -> Path:
    """The state folder: ``$AD_SANDBOX_STATE_DIR`` or ``~/.local/state/ad-sandbox``."""
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ad-sandbox"
