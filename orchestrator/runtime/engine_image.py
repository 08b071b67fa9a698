"""Building the engine image (``images/engine``) of ``compose/compose.dind.yaml``: the
orchestrator image plus Debian's ``docker.io``.

No registry is needed inside the build: the packages ``docker.io`` needs beyond what the
orchestrator image holds are resolved by the host's apt against that image's own dpkg
status (``apt-get install -s``), downloaded on the host (``apt-get download``) and installed
with ``dpkg -i`` in the build. The inputs hash covers the Dockerfile, the orchestrator
image's id and the resolved ``name=version`` list, so a rebuild is skipped (without any
download) when none of them changed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import orchestrator
from orchestrator import paths
from orchestrator.errors import ImageMissing, SandboxError
from orchestrator.runtime.engine import connect
from orchestrator.runtime.images import (
    Progress,
    _docker_build,
    _drop_untagged,
    _tag,
    image_status,
    images_dir,
    inputs_hash,
    is_up_to_date,
)
from orchestrator.runtime.orchestrator_image import orchestrator_ref
from orchestrator.runtime.staging import run_streaming

ENGINE_REPO = "ad-sandbox/engine"
ENGINE_LATEST = f"{ENGINE_REPO}:latest"
ENGINE_PACKAGES = ["docker.io"]
_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")


def engine_ref(version: str = orchestrator.__version__) -> str:
    return f"{ENGINE_REPO}:{version}"


def build_engine(*, force: bool = False, progress: Progress) -> list[str]:
    """Build ``ad-sandbox/engine`` on the orchestrator image; return the tags built."""
    base_ref = orchestrator_ref()
    base = image_status(base_ref)
    if base is None:
        raise ImageMissing(f"{base_ref} is missing",
                           hint="Build it first: `ad-sandbox image build --orchestrator`.")
    dockerfile = images_dir() / "engine" / "Dockerfile"
    work = paths.state_dir() / "stage"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        context = Path(tmp)
        status = context / "dpkg-status"
        status.write_bytes(_dpkg_status(base.id))
        packages = resolve_packages(status)
        wanted = inputs_hash(dockerfile.read_bytes(), base.id, *packages)
        ref = engine_ref()
        current = image_status(ref)
        if not force and is_up_to_date(current, wanted):
            progress(f"{ref} up to date")
            _tag(current.id if current else ref, ENGINE_LATEST)
            return []
        debs = context / "debs"
        debs.mkdir()
        progress(f"staging packages: {' '.join(packages)}")
        run_streaming(["apt-get", "download", "-q", *packages], progress, cwd=debs)
        status.unlink()
        progress(f"building {ref}")
        image_id = _docker_build(context, dockerfile, ref, wanted,
                                 {"BASE_IMAGE": base_ref}, force, progress)
    _tag(image_id, ENGINE_LATEST)
    if current is not None and current.id != image_id:
        _drop_untagged(current.id)  # 330 MB of packages on each orchestrator image it replaced
    return [ref, ENGINE_LATEST]


def _dpkg_status(image_id: str) -> bytes:
    """The image's ``/var/lib/dpkg/status``: what its packages already are."""
    try:
        out = connect().containers.run(image_id, ["cat", "/var/lib/dpkg/status"],
                                       entrypoint=[], remove=True, network_disabled=True)
    except Exception as exc:  # docker's errors, and ContainerError on a non-zero exit
        raise SandboxError(f"could not read the dpkg status of {image_id[:19]}: {exc}") from exc
    return bytes(out)


def resolve_packages(status: Path) -> list[str]:
    """``name=version`` of every package ``apt-get install --no-install-recommends`` of
    :data:`ENGINE_PACKAGES` would add to a system with this dpkg status (the host's apt
    sources and lists; only a simulation, nothing is installed)."""
    done = subprocess.run(
        ["apt-get", "install", "-s", "-q", "--no-install-recommends",
         "-o", f"Dir::State::status={status}", *ENGINE_PACKAGES],
        capture_output=True, text=True, check=False,
    )
    found = [f"{m[1]}={m[2]}" for line in done.stdout.splitlines() if (m := _INST.match(line))]
    if done.returncode != 0 or not any(p.startswith("docker.io=") for p in found):
        raise SandboxError(
            "apt could not resolve docker.io for the engine image: "
            + (done.stderr.strip().splitlines() or ["no docker.io in its plan"])[-1],
            hint="The host's apt needs Debian bookworm sources and lists (`apt-get update`).",
        )
    return sorted(found)
