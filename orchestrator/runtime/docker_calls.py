"""Calling the Docker engine: the one place that retries and translates its errors.

Only errors classified as transient are retried (the engine's 5xx that are not known to be
permanent, a dropped connection, a name still held by a container being removed), a few
times with backoff, and each retry is logged. Everything else becomes our error at once,
raised ``from`` the Docker one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import requests
import tenacity
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from orchestrator.errors import (
    ContainerFailed,
    DockerUnavailable,
    ImageMissing,
    SandboxError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_ATTEMPTS = 4
# 5xx answers that retrying cannot fix: bad image command, bad mount, read-only rootfs...
_PERMANENT_MARKERS = (
    "oci runtime",
    "executable file not found",
    "read-only",
    "no such file",
    "not a directory",
    "permission denied",
    "invalid",
)
_TRANSIENT_CONFLICTS = ("already in progress", "is already in use")


class Gone(ContainerFailed):
    """The engine answered 404: the container, exec, network or volume does not exist.

    Methods that are idempotent catch it; elsewhere it is an ordinary ContainerFailed.
    """


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call may succeed."""
    if isinstance(exc, requests.ConnectionError):
        return True
    if not isinstance(exc, APIError) or isinstance(exc, NotFound):
        return False
    status = exc.status_code or 0
    text = str(exc.explanation or exc).lower()
    if status == 409:
        return any(marker in text for marker in _TRANSIENT_CONFLICTS)
    return status >= 500 and not any(marker in text for marker in _PERMANENT_MARKERS)


def translate(
    exc: BaseException, action: str, *, container: str | None = None, image: str | None = None
) -> SandboxError:
    """Our error for a Docker (or transport) error raised while doing ``action``."""
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, ImageNotFound):
        return ImageMissing(
            f"image {image or '?'} is not on this machine",
            hint="Build it with `ad-sandbox image build` (add --offline-base with no registry).",
            image=image,
        )
    if isinstance(exc, NotFound):
        return Gone(f"{action}: {_explain(exc)}", container=container, status=404, image=image)
    if isinstance(exc, APIError):
        return ContainerFailed(
            f"{action} failed: {_explain(exc)}",
            container=container,
            image=image,
            status=exc.status_code,
        )
    if isinstance(exc, TimeoutError):
        return ContainerFailed(f"{action} timed out", container=container)
    if isinstance(exc, DockerException | requests.RequestException | OSError):
        return DockerUnavailable(
            f"Docker engine stopped answering while trying to {action} ({_explain(exc)})",
            hint="Check that the engine runs (`docker info`) and try again.",
            container=container,
        )
    return ContainerFailed(f"{action} failed: {exc}", container=container)


def call(
    action: str,
    fn: Callable[[], T],
    *,
    container: str | None = None,
    image: str | None = None,
) -> T:
    """Run ``fn`` (one engine request), retrying transient errors, translating the rest."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
        before_sleep=_log_retry(action),
        reraise=True,
    )
    try:
        return retrying(fn)
    except (DockerException, requests.RequestException, OSError) as exc:
        raise translate(exc, action, container=container, image=image) from exc


def _log_retry(action: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "Docker: %s failed (%s), retry %d of %d",
            action,
            _explain(exc) if exc else "?",
            state.attempt_number,
            _ATTEMPTS - 1,
        )

    return before_sleep


def _explain(exc: BaseException) -> str:
    if isinstance(exc, APIError) and exc.explanation:
        text = str(exc.explanation)
    else:
        text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300] if text else type(exc).__name__
