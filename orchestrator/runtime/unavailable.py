"""A runtime for when the engine does not answer: every call raises that same error.

The dispatcher still records each run (ended, with the reason and the next step) instead of
failing before anything is written.
"""

from __future__ import annotations

from typing import Any, NoReturn

from orchestrator.errors import DockerUnavailable


class UnavailableRuntime:
    def __init__(self, error: DockerUnavailable) -> None:
        self.error = error

    def _raise(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise DockerUnavailable(self.error.message, hint=self.error.hint)

    ensure_network = ensure_volume = remove_volume = remove_network = prune_volumes = _raise
    create = write_files = exec = kill = remove = inspect = _raise
    list_managed = logs = was_oom_killed = _raise
    prepare_volume = list_volumes = connect_network = _raise
