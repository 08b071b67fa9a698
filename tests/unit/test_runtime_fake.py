"""The runtime contract against FakeRuntime, plus the fake's own simulation hooks."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace

import pytest

from orchestrator.errors import ContainerFailed, DockerUnavailable
from orchestrator.runtime.base import ContainerSpec, Mount, Runtime
from orchestrator.runtime.fake import FakeExec, FakeRuntime, hang
from tests.runtime_contract import SECRETS_DIR, RuntimeContract, run

IMAGE = "ad-sandbox/test-tiny:latest"


def _lines(proc: FakeExec) -> int:
    code, *lines = proc.argv[1:]
    for line in lines:
        proc.out(line)
    return int(code)


def _env(proc: FakeExec) -> int:
    proc.out(f"{proc.env.get(proc.argv[1], '')} {proc.workdir} {proc.user.split(':')[0]}")
    return 0


def _forever(proc: FakeExec) -> int | None:
    proc.out("ready")
    return hang(proc)


def _cat(proc: FakeExec) -> int:
    for line in proc.stdin.decode().splitlines():
        proc.out(line)
    return 0


def _stat(proc: FakeExec) -> int:
    found = proc.read_file(proc.argv[1])
    if found is None:
        proc.err("no such file\n")
        return 1
    proc.out(f"{found.mode:o} {found.uid} {found.gid}")
    proc.out(found.data.decode())
    return 0


class FakeHarness:
    def __init__(self) -> None:
        self.fake = FakeRuntime(images={IMAGE})
        self.runtime: Runtime = self.fake
        self.session_label = {"ad-sandbox.test": "1"}
        self.missing_image = "ad-sandbox/not-built:never"
        for name, behaviour in {
            "fake-lines": _lines,
            "fake-env": _env,
            "fake-forever": _forever,
            "fake-oom": FakeExec.oom,
            "fake-stat": _stat,
            "fake-cat": _cat,
        }.items():
            self.fake.on_command(name, behaviour)

    def spec(self, **overrides: object) -> ContainerSpec:
        base = ContainerSpec(
            name=f"adsb-test-{uuid.uuid4().hex[:10]}",
            image=IMAGE,
            user="1000:1000",
            workdir="/tmp",
            env={},
            labels=dict(self.session_label),
            mounts=(),
            tmpfs={"/tmp": "size=16m", SECRETS_DIR: "size=1m,uid=1000,gid=1000"},
            network="none",
            cpus=0.5,
            memory_bytes=64 * 1024 * 1024,
            pids_limit=64,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def lines_cmd(self, lines: list[str], exit_code: int) -> list[str]:
        return ["fake-lines", str(exit_code), *lines]

    def cat_cmd(self) -> list[str]:
        return ["fake-cat"]

    def env_cmd(self, name: str) -> list[str]:
        return ["fake-env", name]

    def forever_cmd(self) -> list[str]:
        return ["fake-forever"]

    def oom_cmd(self) -> list[str]:
        return ["fake-oom"]

    def stat_cmd(self, path: str) -> list[str]:
        return ["fake-stat", path]

    def raw_inspect(self, container_id: str) -> str:
        return self.fake.raw_inspect(container_id)


@pytest.fixture
def harness() -> FakeHarness:
    return FakeHarness()


class TestFakeRuntimeContract(RuntimeContract):
    pass


def test_fake_records_calls_and_injects_one_failure(harness: FakeHarness) -> None:
    harness.fake.fail_next["create"] = ContainerFailed("boom")
    with pytest.raises(ContainerFailed, match="boom"):
        harness.fake.create(harness.spec())
    cid = harness.fake.create(harness.spec())
    assert [name for name, _ in harness.fake.calls] == ["create", "create"]
    assert harness.fake.inspect(cid) is not None


def test_fake_engine_down_raises_docker_unavailable(harness: FakeHarness) -> None:
    harness.fake.available = False
    with pytest.raises(DockerUnavailable):
        harness.fake.list_managed()


def test_fake_kill_ends_a_behaviour_that_ignores_it(harness: FakeHarness) -> None:
    release = threading.Event()

    def stubborn(proc: FakeExec) -> int:
        proc.out("ready")
        release.wait(30)
        proc.out("too late")  # dropped: the process is dead
        return 0

    harness.fake.on_command("stubborn", stubborn)
    cid = harness.fake.create(harness.spec())
    threading.Timer(0.05, harness.fake.kill, args=(cid,)).start()
    result, out = run(harness, cid, ["stubborn"])
    release.set()
    assert result.exit_code == 137 and out.lines == ["ready"]


def test_fake_behaviour_error_reaches_the_caller(harness: FakeHarness) -> None:
    def broken(proc: FakeExec) -> int:
        raise RuntimeError("bug in the behaviour")

    harness.fake.on_image(IMAGE, broken)
    cid = harness.fake.create(harness.spec())
    with pytest.raises(RuntimeError, match="bug in the behaviour"):
        run(harness, cid, ["anything"])


def test_fake_simulated_oom_from_outside_ends_exec(harness: FakeHarness) -> None:
    cid = harness.fake.create(harness.spec())
    out_ready = threading.Event()

    def waits(proc: FakeExec) -> int | None:
        out_ready.set()
        return hang(proc)

    harness.fake.on_command("waits", waits)

    def oom_when_ready() -> None:
        if out_ready.wait(30):
            harness.fake.simulate_oom(cid)

    threading.Thread(target=oom_when_ready, daemon=True).start()
    result, _ = run(harness, cid, ["waits"])
    assert result.exit_code == 137 and result.oom_killed
    state = harness.fake.inspect(cid)
    assert state is not None and state.running  # like Docker: only the process died


@pytest.mark.parametrize(
    "overrides",
    [
        {"network": "host"},
        {"network": "container:abc"},
        {"mounts": (Mount("/var/run/docker.sock", "/var/run/docker.sock", False),)},
        {"mounts": (Mount("/src", "relative", True),)},
        {"tmpfs": {"tmp": ""}},
        {"user": "root"},
        {"memory_bytes": 0},
    ],
)
def test_spec_refuses_to_weaken_the_sandbox(
    harness: FakeHarness, overrides: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        harness.spec(**overrides)


def test_stdin_file_missing_is_an_exit_code_not_a_crash(harness: FakeHarness) -> None:
    cid = harness.fake.create(harness.spec())
    result, out = run(harness, cid, ["cat"], stdin_file=f"{SECRETS_DIR}/nope")
    assert result.exit_code not in (0, None) and out.stderr
