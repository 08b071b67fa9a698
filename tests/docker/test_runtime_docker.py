"""The runtime contract against the real engine, plus what only Docker can show.

Uses ``ad-sandbox/base:bookworm`` when it is built, else a tiny busybox image imported from
the host's ``busybox`` binary (nothing can be pulled here).
"""

from __future__ import annotations

import gc
import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import replace

import docker
import pytest

from orchestrator.errors import DockerUnavailable
from orchestrator.runtime import engine
from orchestrator.runtime.base import ContainerSpec, Runtime
from orchestrator.runtime.docker_runtime import DockerRuntime
from tests.runtime_contract import RUN_UID, SECRETS_DIR, RuntimeContract, run

pytestmark = pytest.mark.docker

BASE_IMAGE = "ad-sandbox/base:bookworm"
TINY_IMAGE = "ad-sandbox/test-tiny:latest"
TEST_LABEL = {"ad-sandbox.test": "1"}
MIB = 1024 * 1024


def _tiny_rootfs(busybox: str) -> bytes:
    """A root filesystem with busybox and one symlink per applet."""
    applets = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True, timeout=30
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, data: bytes = b"", mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size = kind, mode, len(data)
            if kind == tarfile.SYMTYPE:
                info.linkname, info.size = data.decode(), 0
                data = b""
            tar.addfile(info, io.BytesIO(data))

        for directory in ("bin", "etc", "tmp", "run", "proc", "sys", "dev", "workspace"):
            add(directory, tarfile.DIRTYPE)
        with open(busybox, "rb") as binary:
            add("bin/busybox", tarfile.REGTYPE, binary.read())
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, b"busybox")
        add("etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        add("etc/group", tarfile.REGTYPE, b"root:x:0:\n", 0o644)
    return buf.getvalue()


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    try:
        return engine.connect()
    except DockerUnavailable as exc:
        pytest.fail(f"no Docker engine: {exc.one_line()}", pytrace=False)


@pytest.fixture(scope="session")
def image(client: docker.DockerClient) -> str:
    for name in (BASE_IMAGE, TINY_IMAGE):
        try:
            client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            continue
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail(f"neither {BASE_IMAGE} nor busybox: run `ad-sandbox image build` or "
                    "install busybox-static")  # fmt: skip
    repository, tag = TINY_IMAGE.split(":")
    client.api.import_image_from_data(
        _tiny_rootfs(busybox),
        repository=repository,
        tag=tag,
        changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin", "LABEL ad-sandbox.test=1"],
    )
    return TINY_IMAGE


class DockerHarness:
    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image
        self.runtime: Runtime = DockerRuntime(client)
        self.session_label = {**TEST_LABEL, "ad-sandbox.test-session": uuid.uuid4().hex}
        self.missing_image = "ad-sandbox/not-built:never"

    def spec(self, **overrides: object) -> ContainerSpec:
        base = ContainerSpec(
            name=f"adsb-test-{uuid.uuid4().hex[:10]}",
            image=self.image,
            user=f"{RUN_UID}:{RUN_UID}",
            workdir="/tmp",
            env={},
            labels=dict(self.session_label),
            mounts=(),
            tmpfs={
                "/tmp": "size=16m,mode=1777",
                SECRETS_DIR: f"size=1m,mode=0700,uid={RUN_UID},gid={RUN_UID}",
            },
            network="none",
            cpus=0.5,
            memory_bytes=64 * MIB,
            pids_limit=64,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def lines_cmd(self, lines: list[str], exit_code: int) -> list[str]:
        return ["sh", "-c", 'for l in "$@"; do echo "$l"; done; exit ' + str(exit_code), "sh",
                *lines]  # fmt: skip

    def cat_cmd(self) -> list[str]:
        return ["cat"]

    def env_cmd(self, name: str) -> list[str]:
        return ["sh", "-c", f'echo "${name} $(pwd) $(id -u)"']

    def forever_cmd(self) -> list[str]:
        return ["sh", "-c", "echo ready; while true; do sleep 1; done"]

    def oom_cmd(self) -> list[str]:
        # tail keeps the whole newline-free input in memory until the OOM killer hits it.
        return ["sh", "-c", "head -c 512m /dev/zero | tail"]

    def stat_cmd(self, path: str) -> list[str]:
        return ["sh", "-c", 'stat -c "%a %u %g" "$1" && cat "$1"', "sh", path]

    def raw_inspect(self, container_id: str) -> str:
        return json.dumps(self.client.api.inspect_container(container_id))

    def cleanup(self) -> None:
        for state in self.runtime.list_managed(self.session_label):
            self.runtime.remove(state.id)


@pytest.fixture
def harness(client: docker.DockerClient, image: str) -> Iterator[DockerHarness]:
    h = DockerHarness(client, image)
    yield h
    h.cleanup()


class TestDockerRuntimeContract(RuntimeContract):
    pass


def test_hardening_holds_inside_the_container(harness: DockerHarness) -> None:
    cid = harness.runtime.create(harness.spec(memory_bytes=48 * MIB, pids_limit=77))
    probe = (
        "touch /x 2>/dev/null && echo root-writable || echo root-readonly; "
        "grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; "
        "ps -o pid,comm | sed -n 2p"
    )
    result, out = run(harness, cid, ["sh", "-c", probe])
    assert result.exit_code == 0, out.stderr
    assert out.lines[0] == "root-readonly"
    status = dict(line.split(":\t") for line in out.lines[1:4])
    assert status == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"}
    assert out.lines[4:6] == [str(48 * MIB), "77"]
    assert "init" in out.lines[6]  # PID 1 is docker-init, not our sleep
    host = harness.client.api.inspect_container(cid)["HostConfig"]
    assert host["ReadonlyRootfs"] and not host["Privileged"] and host["Init"]
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 48 * MIB
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 77
    assert host["NetworkMode"] == "none"


def test_a_quiet_exec_outlives_the_client_timeout(harness: DockerHarness, image: str) -> None:
    slow_client = docker.DockerClient.from_env(timeout=1)
    try:
        runtime = DockerRuntime(slow_client)
        cid = runtime.create(harness.spec())
        lines: list[str] = []
        result = runtime.exec(
            cid,
            ["sh", "-c", "sleep 2.5; echo done"],
            env={},
            user="1000:1000",
            workdir="/tmp",
            stdin_file=None,
            on_stdout_line=lines.append,
            on_stderr=lines.append,
        )
        assert result.exit_code == 0 and lines == ["done"]
    finally:
        slow_client.close()


# docker-py's unix transport does not close its socket when connect() fails; that leak
# is theirs, so its warning is collected here and ignored.
_DOCKER_PY_SOCKET_LEAK = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


@_DOCKER_PY_SOCKET_LEAK
def test_engine_down_raises_docker_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    engine.connect.cache_clear()
    try:
        with pytest.raises(DockerUnavailable) as info:
            DockerRuntime()
        assert "Start" in info.value.hint
    finally:
        engine.connect.cache_clear()
        gc.collect()


@_DOCKER_PY_SOCKET_LEAK
def test_engine_lost_mid_session_raises_docker_unavailable() -> None:
    bogus = docker.DockerClient(
        base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=2
    )
    try:
        with pytest.raises(DockerUnavailable):
            DockerRuntime(bogus).inspect("anything")
    finally:
        bogus.close()
        gc.collect()
