"""Which Docker errors are retried, and what each becomes (no engine needed)."""

from __future__ import annotations

import logging

import pytest
import requests
from docker.errors import APIError, ImageNotFound, NotFound

from orchestrator.errors import ContainerFailed, DockerUnavailable, ImageMissing
from orchestrator.runtime.docker_calls import Gone, call, is_transient, translate


def api_error(status: int, explanation: str) -> APIError:
    response = requests.Response()
    response.status_code = status
    return APIError("engine said no", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (api_error(500, "containerd: connection reset by peer"), True),
        (api_error(503, "daemon is busy"), True),
        (api_error(500, "OCI runtime create failed: exec: no such file"), False),
        (api_error(500, "container rootfs is marked read-only"), False),
        (api_error(409, 'The container name "/x" is already in use by container "y"'), True),
        (api_error(409, "removal of container x is already in progress"), True),
        (api_error(409, "Container x is not running"), False),
        (api_error(400, "invalid reference format"), False),
        (NotFound("no such container"), False),
        (requests.ConnectionError("reset"), True),
        (ValueError("ours"), False),
    ],
)
def test_only_transient_errors_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_translation_keeps_the_data() -> None:
    missing = translate(ImageNotFound("No such image: a:b"), "create", image="a:b")
    assert isinstance(missing, ImageMissing) and missing.data["image"] == "a:b"
    assert "ad-sandbox image build" in missing.hint
    gone = translate(NotFound("no such container"), "inspect", container="c1")
    assert isinstance(gone, Gone) and gone.data["container"] == "c1"
    failed = translate(api_error(409, "Container c1 is not running"), "exec", container="c1")
    assert isinstance(failed, ContainerFailed) and failed.data["status"] == 409
    assert "not running" in failed.message
    down = translate(requests.ConnectionError("refused"), "inspect")
    assert isinstance(down, DockerUnavailable)


def test_call_retries_transient_then_succeeds_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise api_error(500, "temporary failure")
        return "ok"

    with caplog.at_level(logging.WARNING):
        assert call("inspect container", flaky) == "ok"
    assert len(attempts) == 3
    assert [r.message.count("retry") for r in caplog.records] == [1, 1]


def test_call_does_not_retry_permanent_errors() -> None:
    attempts: list[int] = []

    def broken() -> None:
        attempts.append(1)
        raise api_error(409, "Container c1 is not running")

    with pytest.raises(ContainerFailed) as info:
        call("kill container", broken, container="c1")
    assert len(attempts) == 1
    assert isinstance(info.value.__cause__, APIError)
