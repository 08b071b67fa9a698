"""The image build's bookkeeping without an engine: inputs hashes, the skip rule,
binary staging from a cached copy, and extraction of the one file we need."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import SandboxError
from orchestrator.runtime import images, staging
from orchestrator.runtime.images import ImageStatus
from orchestrator.runtime.staging import StagedBinary


def status(labels: dict[str, str], image_id: str = "sha256:aa") -> ImageStatus:
    return ImageStatus(ref="r:t", id=image_id, size_bytes=1, claude_version=None, labels=labels)


def test_inputs_hash_is_stable_and_part_boundaries_count() -> None:
    assert images.inputs_hash("a", b"bc") == images.inputs_hash(b"a", "bc")
    assert images.inputs_hash("ab", "c") != images.inputs_hash("a", "bc")
    assert len(images.inputs_hash()) == 64


def test_agent_hash_changes_with_every_input() -> None:
    binary = StagedBinary(Path("claude"), "f" * 64, 10)
    first = images.agent_inputs_hash(b"FROM x", "1.0", "sha256:base", binary)
    assert first == images.agent_inputs_hash(b"FROM x", "1.0", "sha256:base", binary)
    others = {
        images.agent_inputs_hash(b"FROM y", "1.0", "sha256:base", binary),
        images.agent_inputs_hash(b"FROM x", "1.1", "sha256:base", binary),
        images.agent_inputs_hash(b"FROM x", "1.0", "sha256:other", binary),
        images.agent_inputs_hash(b"FROM x", "1.0", "sha256:base", StagedBinary(
            Path("claude"), "e" * 64, 10)),
        images.agent_inputs_hash(b"FROM x", "1.0", "sha256:base", StagedBinary(
            Path("claude"), "f" * 64, 11)),
    }
    assert first not in others and len(others) == 5


def test_base_hash_tells_offline_from_dockerfile_and_follows_upstream() -> None:
    root = images.images_dir()
    offline = images.base_inputs_hash(root, offline=True)
    assert offline == images.base_inputs_hash(root, offline=True)
    pulled = images.base_inputs_hash(root, offline=False, upstream_id="sha256:1")
    assert pulled != offline
    assert pulled != images.base_inputs_hash(root, offline=False, upstream_id="sha256:2")


def test_up_to_date_only_with_the_same_label() -> None:
    assert images.is_up_to_date(status({images.LABEL_HASH: "h"}), "h")
    assert not images.is_up_to_date(status({images.LABEL_HASH: "old"}), "h")
    assert not images.is_up_to_date(status({}), "h")
    assert not images.is_up_to_date(None, "h")


def test_claude_arch_names() -> None:
    assert staging.claude_arch("x86_64") == "x64"
    assert staging.claude_arch("aarch64") == "arm64"
    with pytest.raises(SandboxError, match="riscv64"):
        staging.claude_arch("riscv64")


def npm_tarball(path: Path, claude: bytes | None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        members = {"package/package.json": b"{}"}
        if claude is not None:
            members["package/claude"] = claude
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def test_extract_binary_takes_only_claude_and_makes_it_executable(tmp_path: Path) -> None:
    tarball = npm_tarball(tmp_path / "pkg.tgz", b"#!binary")
    dest = tmp_path / "out" / "claude"
    dest.parent.mkdir()
    staging.extract_binary(tarball, dest)
    assert dest.read_bytes() == b"#!binary"
    assert dest.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["claude"]


def test_extract_binary_without_claude_is_our_error(tmp_path: Path) -> None:
    tarball = npm_tarball(tmp_path / "pkg.tgz", None)
    with pytest.raises(SandboxError, match="package/claude"):
        staging.extract_binary(tarball, tmp_path / "claude")


def test_stage_claude_reuses_the_cached_binary_without_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # npm would not be found
    cached = tmp_path / "stage" / "9.9.9" / "claude"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"binary")
    said: list[str] = []
    first = staging.stage_claude("9.9.9", said.append)
    assert first.size == 6 and len(first.sha256) == 64
    assert cached.with_name("claude.sha256").read_text().split() == [first.sha256, "6"]
    assert staging.stage_claude("9.9.9", said.append) == first
    assert said == []  # nothing fetched


def test_stage_claude_without_npm_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(SandboxError, match="npm") as caught:
        staging.stage_claude("9.9.9", lambda line: None)
    assert "apt-get install -y npm" in caught.value.hint


def test_build_skips_images_whose_inputs_did_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both images carrying the hashes of the current inputs nothing is built."""
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path))
    binary = tmp_path / "stage" / "9.9.9" / "claude"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"binary")
    staged = staging.stage_claude("9.9.9", lambda line: None)
    root = images.images_dir()
    base = status({images.LABEL_HASH: images.base_inputs_hash(root, offline=True)}, "sha256:b")
    agent_hash = images.agent_inputs_hash(
        (root / "agent" / "Dockerfile").read_bytes(), "9.9.9", base.id, staged
    )
    known = {images.BASE_REF: base, "ad-sandbox/agent:9.9.9": status(
        {images.LABEL_HASH: agent_hash}, "sha256:a")}
    tagged: list[tuple[str, str]] = []

    def no_build(*args: object, **kwargs: object) -> str:
        raise AssertionError("nothing should be built")

    monkeypatch.setattr(images, "image_status", known.get)
    monkeypatch.setattr(images, "_docker_build", no_build)
    monkeypatch.setattr(images, "_tag", lambda image_id, ref: tagged.append((image_id, ref)))
    said: list[str] = []
    built = images.build_images(offline_base=True, claude_version="9.9.9", progress=said.append)
    assert built == []
    assert said == ["ad-sandbox/base:bookworm up to date", "ad-sandbox/agent:9.9.9 up to date"]
    assert tagged == [("sha256:a", images.AGENT_LATEST)]


def test_build_rebuilds_the_agent_when_its_base_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path))
    binary = tmp_path / "stage" / "9.9.9" / "claude"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"binary")
    root = images.images_dir()
    base = status({images.LABEL_HASH: images.base_inputs_hash(root, offline=True)}, "sha256:new")
    stale_agent = status({images.LABEL_HASH: "built-on-the-old-base"}, "sha256:a")
    known = {images.BASE_REF: base, "ad-sandbox/agent:9.9.9": stale_agent}
    builds: list[tuple[str, dict[str, str]]] = []

    def fake_build(context: Path, dockerfile: Path, ref: str, wanted: str,
                   buildargs: dict[str, str], force: bool, progress: object) -> str:
        builds.append((ref, buildargs))
        return "sha256:rebuilt"

    monkeypatch.setattr(images, "image_status", known.get)
    monkeypatch.setattr(images, "_docker_build", fake_build)
    monkeypatch.setattr(images, "_tag", lambda image_id, ref: None)
    built = images.build_images(offline_base=True, claude_version="9.9.9", progress=print)
    assert built == ["ad-sandbox/agent:9.9.9", images.AGENT_LATEST]
    assert builds == [("ad-sandbox/agent:9.9.9",
                       {"BASE_IMAGE": images.BASE_REF, "CLAUDE_VERSION": "9.9.9"})]
