"""An agent's directory stays the directory that was registered (mount redirection).

An agent whose project contains another agent's directory can replace that directory with
a symlink to any host path, or with another directory; the other agent's next run would
bind-mount whatever is there now, read-write, as its owner. So:

- ``add``/``update`` store the resolved path (no symlinks) in the config and pin it: the
  resolved path, device and inode go into the state DB (:mod:`orchestrator.state.pins`);
  an agent from a hand-written config is pinned on first use (trust on first use);
- before every container, :func:`verify_directory` walks the pinned path from ``/`` with
  ``O_NOFOLLOW`` and compares device and inode: a component that became a symlink, a
  directory that resolves elsewhere or a different inode is refused (exit 2).

What remains is a race: the engine resolves the bind source itself, after this check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.config import Agent, Config
from orchestrator.errors import DirectoryChanged, UsageError
from orchestrator.paths import config_path
from orchestrator.safefs import RefusedPath, open_directory
from orchestrator.state.pins import DirectoryPin


class PinStore(Protocol):
    """Where pins are kept: :class:`orchestrator.state.StateStore`."""

    def directory_pin(self, config: str, agent: str) -> DirectoryPin | None: ...

    def set_directory_pin(self, config: str, agent: str, pin: DirectoryPin,
                          *, replace: bool = True) -> DirectoryPin: ...

    def drop_directory_pin(self, config: str, agent: str) -> None: ...


def config_key() -> str:
    """The identity of the config file the pins belong to: its resolved path."""
    return os.path.realpath(config_path())


def _hint(agent_name: str) -> str:
    return (f"Check the directory; if the change is yours, re-register it with "
            f"`ad-sandbox update {agent_name} --directory DIR`.")


def _missing(agent_name: str, path: Path | str) -> UsageError:
    return UsageError(
        f"agent {agent_name!r}: directory {path} does not exist",
        hint=f"Restore it, or point the agent elsewhere with `ad-sandbox update {agent_name} "
        "--directory DIR`.",
        agent=agent_name,
    )


def _stat_walked(agent_name: str, resolved: str) -> os.stat_result:
    """fstat of ``resolved`` opened with no symlink followed on the way."""
    try:
        with open_directory(resolved) as fd:
            return os.fstat(fd)
    except RefusedPath as exc:
        raise DirectoryChanged(
            f"agent {agent_name!r}: {exc.path} became a symlink, so directory {resolved} "
            "is no longer the one registered; refusing to mount it",
            hint=_hint(agent_name), agent=agent_name, path=resolved, symlink=exc.path,
        ) from None
    except FileNotFoundError:
        raise _missing(agent_name, resolved) from None
    except NotADirectoryError:
        raise UsageError(f"agent {agent_name!r}: {resolved} is not a directory",
                         agent=agent_name) from None
    except PermissionError:
        raise UsageError(f"agent {agent_name!r}: directory {resolved} is not readable",
                         agent=agent_name) from None


def current_pin(agent_name: str, agent: Agent) -> DirectoryPin:
    """The pin ``agent``'s directory would get now (it must exist and be a directory)."""
    resolved = os.path.realpath(agent.path)
    info = _stat_walked(agent_name, resolved)
    return DirectoryPin(agent.directory, resolved, info.st_dev, info.st_ino)


def pin_directory(store: PinStore, agent_name: str, agent: Agent) -> DirectoryPin:
    """Pin ``agent``'s directory as it is now (``add``, ``update --directory``)."""
    return store.set_directory_pin(config_key(), agent_name, current_pin(agent_name, agent))


def forget_directory(store: PinStore, agent_name: str) -> None:
    store.drop_directory_pin(config_key(), agent_name)


def verify_directory(agent_name: str, agent: Agent,
                     store: PinStore | None = None) -> os.stat_result:
    """The stat of ``agent``'s directory, after checking it is the one pinned.

    Without a store only the walk is done (exists, a directory, readable). Raises
    :class:`DirectoryChanged` (exit 2) naming what changed, :class:`UsageError` when the
    directory is missing or unreadable.
    """
    if store is None:
        info = _stat_walked(agent_name, os.path.realpath(agent.path))
    else:
        key = config_key()
        pin = store.directory_pin(key, agent_name)
        if pin is None or pin.directory != agent.directory:
            # First use, or the user pointed the config elsewhere (the agent cannot edit it).
            pin = store.set_directory_pin(key, agent_name, current_pin(agent_name, agent),
                                          replace=pin is not None)
        info = _check_pin(agent_name, agent, pin)
    if not os.access(agent.path, os.R_OK | os.X_OK):
        raise UsageError(f"agent {agent_name!r}: directory {agent.path} is not readable",
                         agent=agent_name)
    return info


def _check_pin(agent_name: str, agent: Agent, pin: DirectoryPin) -> os.stat_result:
    info = _stat_walked(agent_name, pin.resolved)
    if (info.st_dev, info.st_ino) != (pin.dev, pin.ino):
        raise DirectoryChanged(
            f"agent {agent_name!r}: directory {pin.resolved} was replaced by another directory "
            f"(device:inode {info.st_dev}:{info.st_ino}, registered {pin.dev}:{pin.ino}); "
            "refusing to mount it",
            hint=_hint(agent_name), agent=agent_name, path=pin.resolved,
        )
    resolved = os.path.realpath(agent.path)
    if resolved != pin.resolved:
        raise DirectoryChanged(
            f"agent {agent_name!r}: directory {agent.directory} now resolves to {resolved}, "
            f"not {pin.resolved} as registered; refusing to mount it",
            hint=_hint(agent_name), agent=agent_name, path=str(agent.path),
        )
    return info


@dataclass(frozen=True)
class Nesting:
    """Agent ``inner``'s directory lies inside agent ``outer``'s."""

    inner: str
    outer: str
    inner_path: str
    outer_path: str

    def warning(self) -> str:
        return (f"agent {self.inner}'s directory {self.inner_path} lies inside agent "
                f"{self.outer}'s ({self.outer_path}): runs of {self.outer} can change what "
                f"{self.inner} mounts (ad-sandbox refuses a swapped directory, but {self.outer} "
                f"can still read and write all of {self.inner}'s files)")


def nested_agents(config: Config, only: str | None = None) -> list[Nesting]:
    """Pairs of agents where one directory lies inside (or is) another's.

    With ``only``, just the pairs that involve that agent.
    """
    paths = {name: Path(os.path.realpath(agent.path)) for name, agent in config.agents.items()}
    found: list[Nesting] = []
    for inner, inner_path in sorted(paths.items()):
        for outer, outer_path in sorted(paths.items()):
            if inner == outer or (only is not None and only not in (inner, outer)):
                continue
            if inner_path == outer_path and inner > outer:
                continue  # the same directory twice: report the pair once
            if inner_path.is_relative_to(outer_path):
                found.append(Nesting(inner, outer, str(inner_path), str(outer_path)))
    return found


def pin_problem(store: PinStore, agent_name: str, agent: Agent) -> str | None:
    """What changed about ``agent``'s directory since it was pinned; None when nothing did
    or it was never pinned (nothing is pinned here: ``doctor`` only looks)."""
    pin = store.directory_pin(config_key(), agent_name)
    if pin is None or pin.directory != agent.directory:
        return None
    try:
        _check_pin(agent_name, agent, pin)
    except DirectoryChanged as exc:
        return exc.message
    except UsageError:
        return None  # missing or unreadable: reported by the directory check
    return None
