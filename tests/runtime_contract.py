"""The contract every :class:`~orchestrator.runtime.base.Runtime` must meet.

A test module subclasses :class:`RuntimeContract` and provides a ``harness`` fixture: the
runtime under test plus the few things that differ per implementation (the image, and an
argv that does X — a shell command on Docker, a registered behaviour on the fake).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from typing import Protocol

import pytest

from orchestrator.errors import ContainerFailed, ImageMissing
from orchestrator.runtime.base import MANAGED_LABEL, ContainerSpec, ExecResult, Runtime

SECRETS_DIR = "/run/secrets"
RUN_UID = 1000
KILL_DEADLINE = 1.0  # seconds from kill() to exec() returning
WAIT = 30.0  # generous deadline for anything we wait on


class Harness(Protocol):
    runtime: Runtime
    session_label: dict[str, str]
    missing_image: str

    def spec(self, **overrides: object) -> ContainerSpec:
        """A valid spec: unique name, uid 1000, tmpfs /tmp and /run/secrets, labels."""
        ...

    def lines_cmd(self, lines: list[str], exit_code: int) -> list[str]: ...
    def cat_cmd(self) -> list[str]: ...
    def env_cmd(self, name: str) -> list[str]:
        """Prints one line: '$name cwd uid'."""
        ...

    def forever_cmd(self) -> list[str]:
        """Prints 'ready', then runs until killed."""
        ...

    def oom_cmd(self) -> list[str]: ...
    def stat_cmd(self, path: str) -> list[str]:
        """Prints 'MODE UID GID' (octal mode), then the file's content."""
        ...

    def raw_inspect(self, container_id: str) -> str:
        """Everything the engine shows about the container."""
        ...


class Run:
    """Collects one exec's output."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()

    def line(self, text: str) -> None:
        self.lines.append(text)
        if text == "ready":
            self.ready.set()

    def err(self, text: str) -> None:
        self.stderr.append(text)


def run(
    h: Harness,
    cid: str,
    argv: list[str],
    *,
    stdin_file: str | None = None,
    stdin_data: bytes | None = None,
    env: dict[str, str] | None = None,
    out: Run | None = None,
) -> tuple[ExecResult, Run]:
    out = out or Run()
    result = h.runtime.exec(
        cid,
        argv,
        env=env or {},
        user=f"{RUN_UID}:{RUN_UID}",
        workdir="/tmp",
        stdin_file=stdin_file,
        stdin_data=stdin_data,
        on_stdout_line=out.line,
        on_stderr=out.err,
    )
    return result, out


class RuntimeContract:
    """Subclass in a test module that defines a ``harness`` fixture."""

    @pytest.fixture
    def cid(self, harness: Harness) -> str:
        return harness.runtime.create(harness.spec())

    def test_create_starts_a_labelled_container(self, harness: Harness) -> None:
        spec = harness.spec(labels={**harness.session_label, "ad-sandbox.agent": "infra"})
        cid = harness.runtime.create(spec)
        state = harness.runtime.inspect(cid)
        assert state is not None and state.running and state.status == "running"
        assert state.exit_code is None and not state.oom_killed
        assert state.labels[MANAGED_LABEL] == "1"
        assert state.labels["ad-sandbox.agent"] == "infra"
        listed = harness.runtime.list_managed(
            {"ad-sandbox.agent": "infra", **harness.session_label}
        )
        assert [s.id for s in listed] == [cid]

    def test_exec_streams_lines_in_order_and_returns_exit_code(
        self, harness: Harness, cid: str
    ) -> None:
        result, out = run(harness, cid, harness.lines_cmd(["alpha", "beta", "gamma"], 3))
        assert out.lines == ["alpha", "beta", "gamma"]
        assert result.exit_code == 3 and not result.oom_killed
        result, _ = run(harness, cid, harness.lines_cmd([], 0))
        assert result.exit_code == 0

    def test_exec_passes_env_user_workdir(self, harness: Harness, cid: str) -> None:
        result, out = run(harness, cid, harness.env_cmd("GREETING"), env={"GREETING": "hi-there"})
        assert result.exit_code == 0
        assert out.lines == [f"hi-there /tmp {RUN_UID}"]

    def test_stdin_comes_from_a_file_in_the_container(self, harness: Harness, cid: str) -> None:
        harness.runtime.write_files(
            cid, SECRETS_DIR, {"task.txt": b"first line\nsecond line\n"}, uid=RUN_UID, gid=RUN_UID
        )
        result, out = run(harness, cid, harness.cat_cmd(), stdin_file=f"{SECRETS_DIR}/task.txt")
        assert result.exit_code == 0
        assert out.lines == ["first line", "second line"]

    def test_stdin_data_is_sent_whole_then_closed(self, harness: Harness, cid: str) -> None:
        big = b"".join(b"line %d\n" % n for n in range(20_000))  # past any pipe buffer
        result, out = run(harness, cid, harness.cat_cmd(), stdin_data=big)
        assert result.exit_code == 0
        assert len(out.lines) == 20_000 and out.lines[-1] == "line 19999"

    def test_stdin_is_empty_without_a_file(self, harness: Harness, cid: str) -> None:
        # `cat` would block forever on an inherited, open stdin.
        result, out = run(harness, cid, harness.cat_cmd())
        assert result.exit_code == 0 and out.lines == []

    def test_write_files_mode_owner_and_not_in_inspect(self, harness: Harness, cid: str) -> None:
        secret = f"sekrit-{uuid.uuid4().hex}"
        harness.runtime.write_files(
            cid, SECRETS_DIR, {"DB_URL": secret.encode()}, uid=RUN_UID, gid=RUN_UID
        )
        result, out = run(harness, cid, harness.stat_cmd(f"{SECRETS_DIR}/DB_URL"))
        assert result.exit_code == 0
        assert out.lines == [f"400 {RUN_UID} {RUN_UID}", secret]
        assert secret not in harness.raw_inspect(cid)
        # Writing again replaces the file although it is read-only for its owner.
        harness.runtime.write_files(
            cid, SECRETS_DIR, {"DB_URL": b"v2", "API.key": b"k"}, uid=RUN_UID, gid=RUN_UID
        )
        _, out = run(harness, cid, harness.stat_cmd(f"{SECRETS_DIR}/DB_URL"))
        assert out.lines[1:] == ["v2"]
        _, out = run(harness, cid, harness.stat_cmd(f"{SECRETS_DIR}/API.key"))
        assert out.lines == [f"400 {RUN_UID} {RUN_UID}", "k"]
        harness.runtime.write_files(cid, SECRETS_DIR, {}, uid=RUN_UID, gid=RUN_UID)

    def test_write_files_rejects_names_that_escape(self, harness: Harness, cid: str) -> None:
        for bad in ("../x", "a/b", "..", ""):
            with pytest.raises(ValueError):
                harness.runtime.write_files(cid, SECRETS_DIR, {bad: b"x"}, uid=RUN_UID, gid=RUN_UID)

    def test_write_files_outside_a_tmpfs_fails(self, harness: Harness, cid: str) -> None:
        with pytest.raises(ContainerFailed):
            harness.runtime.write_files(cid, "/etc", {"x": b"x"}, uid=RUN_UID, gid=RUN_UID)

    def test_kill_from_another_thread_ends_exec_fast(self, harness: Harness, cid: str) -> None:
        out = Run()
        results: list[ExecResult] = []
        worker = threading.Thread(
            target=lambda: results.append(run(harness, cid, harness.forever_cmd(), out=out)[0])
        )
        worker.start()
        assert out.ready.wait(WAIT), "the process never printed 'ready'"
        killed_at = time.monotonic()
        harness.runtime.kill(cid)
        worker.join(WAIT)
        elapsed = time.monotonic() - killed_at
        assert not worker.is_alive()
        assert elapsed < KILL_DEADLINE, f"exec returned {elapsed:.2f}s after kill"
        assert results[0].exit_code in (None, 137)
        assert not results[0].oom_killed  # a kill is not an OOM
        state = harness.runtime.inspect(cid)
        assert state is not None and not state.running
        harness.runtime.kill(cid)  # idempotent

    def test_exec_in_a_stopped_container_fails(self, harness: Harness, cid: str) -> None:
        harness.runtime.kill(cid)
        with pytest.raises(ContainerFailed):
            run(harness, cid, harness.lines_cmd(["x"], 0))

    def test_oom_of_an_exec_is_detected(self, harness: Harness) -> None:
        cid = harness.runtime.create(harness.spec(memory_bytes=32 * 1024 * 1024))
        result, _ = run(harness, cid, harness.lines_cmd(["fine"], 0))
        assert not result.oom_killed
        assert not harness.runtime.was_oom_killed(cid)
        result, _ = run(harness, cid, harness.oom_cmd())
        assert result.exit_code == 137
        assert result.oom_killed
        assert harness.runtime.was_oom_killed(cid)

    def test_remove_is_idempotent(self, harness: Harness, cid: str) -> None:
        harness.runtime.remove(cid)
        harness.runtime.remove(cid)
        harness.runtime.kill(cid)
        assert harness.runtime.inspect(cid) is None
        assert harness.runtime.logs(cid) == ""
        assert cid not in [s.id for s in harness.runtime.list_managed(harness.session_label)]
        assert not harness.runtime.was_oom_killed(cid)

    def test_missing_image_raises_image_missing(self, harness: Harness) -> None:
        spec = harness.spec(image=harness.missing_image)
        with pytest.raises(ImageMissing) as info:
            harness.runtime.create(spec)
        assert "ad-sandbox image build" in info.value.hint
        assert all(s.name != spec.name for s in harness.runtime.list_managed())

    def test_an_unregistered_runtime_fails_with_how_to_register(self, harness: Harness) -> None:
        spec = harness.spec(runtime="no-such-runtime")
        with pytest.raises(ContainerFailed) as info:
            harness.runtime.create(spec)
        assert info.value.message == ("runtime no-such-runtime is not registered with the "
                                      "Docker engine")
        assert "daemon.json" in info.value.hint
        assert all(s.name != spec.name for s in harness.runtime.list_managed())

    def test_duplicate_name_fails_and_keeps_the_first(self, harness: Harness) -> None:
        spec = harness.spec()
        first = harness.runtime.create(spec)
        with pytest.raises(ContainerFailed):
            harness.runtime.create(replace(spec))
        state = harness.runtime.inspect(first)
        assert state is not None and state.running

    def test_networks_and_volumes_are_idempotent(self, harness: Harness) -> None:
        name = f"adsb-test-{uuid.uuid4().hex[:8]}"
        try:
            info = harness.runtime.ensure_network(name, internal=True, labels=harness.session_label)
            again = harness.runtime.ensure_network(name, internal=True, labels={})
            assert info == again and info.internal and info.gateway_ip.count(".") == 3
            with pytest.raises(Exception, match="internal"):
                harness.runtime.ensure_network(name, internal=False, labels={})
            cid = harness.runtime.create(harness.spec(network=name))
            state = harness.runtime.inspect(cid)
            assert state is not None and state.running
            harness.runtime.remove(cid)
            harness.runtime.ensure_volume(name, labels=harness.session_label)
            harness.runtime.ensure_volume(name, labels=harness.session_label)
        finally:
            harness.runtime.remove_network(name)
            harness.runtime.remove_network(name)
            harness.runtime.remove_volume(name)
            harness.runtime.remove_volume(name)
