"""Building and inspecting the base and agent images (SPEC §4, REFERENCE §4).

The agent image is the base plus one staged file, the pinned ``claude`` binary. Every
image we build carries an ``ad-sandbox.inputs-hash`` label computed from what went into
it; a build whose inputs did not change is skipped ("up to date").
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.errors import DockerException, ImageNotFound

import orchestrator
from orchestrator import paths
from orchestrator.errors import ImageMissing, SandboxError
from orchestrator.runtime.engine import connect
from orchestrator.runtime.staging import StagedBinary, run_streaming, stage_claude

Progress = Callable[[str], None]

BASE_REF = "ad-sandbox/base:bookworm"
AGENT_REPO = "ad-sandbox/agent"
AGENT_LATEST = f"{AGENT_REPO}:latest"
UPSTREAM_BASE = "debian:bookworm-slim"
SUITE = "bookworm"
LABEL_HASH = "ad-sandbox.inputs-hash"
LABEL_VERSION = "ad-sandbox.claude-version"


@dataclass(frozen=True)
class ImageStatus:
    """What the engine knows about one of our images."""

    ref: str
    id: str
    size_bytes: int
    claude_version: str | None
    labels: dict[str, str]


def agent_ref(claude_version: str = orchestrator.CLAUDE_VERSION) -> str:
    return f"{AGENT_REPO}:{claude_version}"


def images_dir() -> Path:
    """The repository's ``images/`` folder (Dockerfiles and package lists)."""
    found = Path(__file__).resolve().parents[2] / "images"
    if not (found / "agent" / "Dockerfile").is_file():
        raise SandboxError(
            f"image definitions not found at {found}",
            hint="Run ad-sandbox from a checkout of the repository (pip install -e .).",
        )
    return found


def image_status(ref: str) -> ImageStatus | None:
    """The image ``ref`` as the engine sees it, or ``None`` when it is not there."""
    client = connect()
    try:
        image = client.images.get(ref)
    except ImageNotFound:
        return None
    except DockerException as exc:
        raise SandboxError(f"could not inspect image {ref}: {exc}") from exc
    return _status(ref, image.attrs)


def list_images() -> list[ImageStatus]:
    """Every tag of every image we built (they all carry the inputs-hash label)."""
    try:
        found = connect().images.list(filters={"label": LABEL_HASH})
    except DockerException as exc:
        raise SandboxError(f"could not list images: {exc}") from exc
    return sorted(
        (_status(tag, image.attrs) for image in found for tag in image.tags),
        key=lambda status: status.ref,
    )


def _status(ref: str, attrs: dict[str, Any]) -> ImageStatus:
    labels = dict((attrs.get("Config") or {}).get("Labels") or {})
    return ImageStatus(
        ref=ref,
        id=str(attrs["Id"]),
        size_bytes=int(attrs.get("Size") or 0),
        claude_version=labels.get(LABEL_VERSION),
        labels=labels,
    )


def inputs_hash(*parts: bytes | str) -> str:
    """A stable digest of build inputs; each part is length-prefixed so none can blur."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def is_up_to_date(status: ImageStatus | None, wanted_hash: str) -> bool:
    """True when the image exists and was built from exactly these inputs."""
    return status is not None and status.labels.get(LABEL_HASH) == wanted_hash


def base_inputs_hash(images: Path, *, offline: bool, upstream_id: str = "") -> str:
    base = images / "base"
    files = [base / "packages.txt", base / "dpkg-excludes.cfg"]
    if not offline:
        files.append(base / "Dockerfile")
    mode = f"mmdebstrap minbase {SUITE}" if offline else f"dockerfile {upstream_id}"
    return inputs_hash(mode, *(path.read_bytes() for path in files))


def agent_inputs_hash(dockerfile: bytes, version: str, base_id: str, binary: StagedBinary) -> str:
    return inputs_hash(dockerfile, version, base_id, binary.sha256, str(binary.size))


# --- building ------------------------------------------------------------------------


def build_images(
    *,
    offline_base: bool,
    claude_version: str = orchestrator.CLAUDE_VERSION,
    force: bool = False,
    progress: Progress,
) -> list[str]:
    """Build the base then the agent image; return the tags built (skipped ones excluded)."""
    images = images_dir()
    built: list[str] = []
    binary = stage_claude(claude_version, progress)
    if offline_base:
        built += _build_base_offline(images, force, progress)
    else:
        built += _build_base_dockerfile(images, force, progress)
    base = image_status(BASE_REF)
    if base is None:
        raise ImageMissing(f"{BASE_REF} is missing after its build")
    built += _build_agent(images, claude_version, base.id, binary, force, progress)
    return built


def ensure_images(
    *,
    offline_base: bool | None = None,
    claude_version: str = orchestrator.CLAUDE_VERSION,
    progress: Progress,
) -> list[str]:
    """Build the agent image only when it is missing; ``offline_base=None`` picks the base
    path by whether ``debian:bookworm-slim`` is available or can be pulled."""
    if image_status(agent_ref(claude_version)) is not None:
        return []
    if offline_base is None:
        offline_base = base_pull_error() is not None
        if offline_base:
            progress(f"{UPSTREAM_BASE} cannot be pulled: building the base offline")
    return build_images(offline_base=offline_base, claude_version=claude_version, progress=progress)


def base_pull_error() -> str | None:
    """``None`` when the upstream base is local or pullable, else why it is not."""
    client = connect()
    try:
        client.images.get(UPSTREAM_BASE)
        return None
    except ImageNotFound:
        pass
    except DockerException as exc:
        return str(exc)
    repo, tag = UPSTREAM_BASE.split(":")
    try:
        client.images.pull(repo, tag=tag)
    except DockerException as exc:
        return _first_line(exc)
    return None


def _build_base_dockerfile(images: Path, force: bool, progress: Progress) -> list[str]:
    upstream = _upstream_id()
    wanted = base_inputs_hash(images, offline=False, upstream_id=upstream or "")
    if not force and is_up_to_date(image_status(BASE_REF), wanted):
        progress(f"{BASE_REF} up to date")
        return []
    if upstream is None:
        reason = base_pull_error()
        if reason is not None:
            raise ImageMissing(
                f"cannot pull {UPSTREAM_BASE} for the base image ({reason})",
                hint="With no registry, build the base from Debian packages: "
                "`ad-sandbox image build --offline-base`.",
            )
        upstream = _upstream_id() or ""
        wanted = base_inputs_hash(images, offline=False, upstream_id=upstream)
    progress(f"building {BASE_REF} from {UPSTREAM_BASE}")
    _docker_build(
        images / "base", images / "base" / "Dockerfile", BASE_REF, wanted, {}, force, progress
    )
    return [BASE_REF]


def _upstream_id() -> str | None:
    status = image_status(UPSTREAM_BASE)
    return status.id if status else None


def _build_base_offline(images: Path, force: bool, progress: Progress) -> list[str]:
    wanted = base_inputs_hash(images, offline=True)
    if not force and is_up_to_date(image_status(BASE_REF), wanted):
        progress(f"{BASE_REF} up to date")
        return []
    mmdebstrap_import(
        BASE_REF,
        images / "base",
        ["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]', f"LABEL {LABEL_HASH}={wanted}"],
        progress,
    )
    return [BASE_REF]


def mmdebstrap_import(ref: str, definition: Path, changes: list[str], progress: Progress) -> None:
    """Make a Debian minbase root filesystem with the packages of ``definition/packages.txt``
    (dpkg excludes from ``definition/dpkg-excludes.cfg``) and import it as ``ref``."""
    if shutil.which("mmdebstrap") is None:
        raise SandboxError(
            f"mmdebstrap is not installed (needed to build {ref} without a registry)",
            hint="Install it (`apt-get install -y mmdebstrap`, or run scripts/bootstrap.sh).",
        )
    packages = [p for p in (definition / "packages.txt").read_text().split() if p]
    work = paths.state_dir() / "stage"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        # No mirror argument: mmdebstrap then uses the stable mirrors apt is set up for.
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(packages),
            '--aptopt=APT::Install-Recommends "false"',
            f"--dpkgopt={definition / 'dpkg-excludes.cfg'}",
            SUITE,
            str(rootfs),
        ]
        progress(f"building {ref} offline: mmdebstrap {SUITE} ({', '.join(packages)})")
        run_streaming(argv, progress)
        progress(f"importing {ref}")
        repository, tag = ref.rsplit(":", 1)
        try:
            connect().api.import_image_from_file(
                str(rootfs), repository=repository, tag=tag, changes=changes
            )
        except DockerException as exc:
            raise SandboxError(f"docker import of {ref} failed: {exc}") from exc


def _build_agent(
    images: Path,
    version: str,
    base_id: str,
    binary: StagedBinary,
    force: bool,
    progress: Progress,
) -> list[str]:
    dockerfile = images / "agent" / "Dockerfile"
    wanted = agent_inputs_hash(dockerfile.read_bytes(), version, base_id, binary)
    ref = agent_ref(version)
    current = image_status(ref)
    if not force and current is not None and is_up_to_date(current, wanted):
        progress(f"{ref} up to date")
        _tag(current.id, AGENT_LATEST)
        return []
    progress(f"building {ref}")
    image_id = _docker_build(
        binary.path.parent,
        dockerfile,
        ref,
        wanted,
        {"BASE_IMAGE": BASE_REF, "CLAUDE_VERSION": version},
        force,
        progress,
    )
    _tag(image_id, AGENT_LATEST)
    if current is not None and current.id != image_id:
        _drop_untagged(current.id)
    return [ref, AGENT_LATEST]


def _drop_untagged(image_id: str) -> None:
    """Remove a replaced agent image (400 MB each) once nothing names or uses it."""
    with contextlib.suppress(DockerException):  # in use by a container: the engine keeps it
        if not connect().images.get(image_id).tags:
            connect().api.remove_image(image_id, noprune=False)


def _docker_build(
    context: Path,
    dockerfile: Path,
    ref: str,
    wanted_hash: str,
    buildargs: dict[str, str],
    force: bool,
    progress: Progress,
) -> str:
    """Run one ``docker build``, streaming its output; return the new image id."""
    lines: list[str] = []
    try:
        stream = connect().api.build(
            path=str(context),
            dockerfile=str(dockerfile),
            tag=ref,
            buildargs=buildargs,
            labels={LABEL_HASH: wanted_hash},
            rm=True,
            forcerm=True,
            nocache=force,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                raise SandboxError(
                    f"docker build of {ref} failed: {str(chunk['error']).strip()}",
                    hint="Read the build output above; `--force` rebuilds from scratch.",
                    last_lines=lines[-20:],
                )
            for line in _chunk_lines(chunk):
                lines.append(line)
                progress(line)
    except DockerException as exc:
        raise SandboxError(f"docker build of {ref} failed: {_first_line(exc)}") from exc
    status = image_status(ref)
    if status is None:
        raise ImageMissing(f"{ref} is missing after its build", last_lines=lines[-20:])
    return status.id


def _chunk_lines(chunk: dict[str, Any]) -> Iterator[str]:
    text = str(chunk.get("stream") or chunk.get("status") or "")
    for line in text.splitlines():
        if line.strip():
            yield line.rstrip()


def _tag(image_id: str, ref: str) -> None:
    repo, tag = ref.rsplit(":", 1)
    try:
        connect().api.tag(image_id, repo, tag, force=True)
    except DockerException as exc:
        raise SandboxError(f"could not tag {ref}: {exc}") from exc


def _first_line(exc: Exception) -> str:
    # An APIError's explanation is the engine's own words, without the request URL.
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
