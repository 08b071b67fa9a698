"""Building the orchestrator image (``images/orchestrator``): the package in the base image.

No registry is needed inside the build: the wheels are staged on the host first (the
project's own wheel, its runtime dependencies as cp311 manylinux wheels at the versions this
environment runs, and a pip wheel to install them with), and the image installs them with
``pip install --no-index``. Like the other images it carries an inputs-hash label and is
skipped when nothing that goes into it changed.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import orchestrator
from orchestrator import paths
from orchestrator.errors import ImageMissing, SandboxError
from orchestrator.runtime.images import (
    BASE_REF,
    Progress,
    _docker_build,
    _tag,
    image_status,
    images_dir,
    inputs_hash,
    is_up_to_date,
)
from orchestrator.runtime.staging import run_streaming

ORCHESTRATOR_REPO = "ad-sandbox/orchestrator"
ORCHESTRATOR_LATEST = f"{ORCHESTRATOR_REPO}:latest"
PYTHON_TAGS = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
"""The base image's python3 (Debian bookworm)."""


def orchestrator_ref(version: str = orchestrator.__version__) -> str:
    return f"{ORCHESTRATOR_REPO}:{version}"


def source_root() -> Path:
    """The checkout holding ``pyproject.toml`` (the wheel is built from it)."""
    root = images_dir().parent
    if not (root / "pyproject.toml").is_file():
        raise SandboxError(f"pyproject.toml not found in {root}",
                           hint="Build the orchestrator image from a checkout of the repository.")
    return root


def orchestrator_inputs_hash(root: Path, dockerfile: bytes, base_id: str) -> str:
    """The Dockerfile, the base and every file the project's wheel is built from."""
    sources = sorted(p for p in (root / "orchestrator").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    parts: list[bytes | str] = [dockerfile, base_id, (root / "pyproject.toml").read_bytes()]
    for path in sources:
        parts += [str(path.relative_to(root)), path.read_bytes()]
    return inputs_hash(*parts)


def build_orchestrator(*, force: bool = False, progress: Progress) -> list[str]:
    """Build ``ad-sandbox/orchestrator`` on the base image; return the tags built."""
    base = image_status(BASE_REF)
    if base is None:
        raise ImageMissing(f"{BASE_REF} is missing",
                           hint="Build it first: `ad-sandbox image build` (or --offline-base).")
    root = source_root()
    dockerfile = images_dir() / "orchestrator" / "Dockerfile"
    wanted = orchestrator_inputs_hash(root, dockerfile.read_bytes(), base.id)
    ref = orchestrator_ref()
    current = image_status(ref)
    if not force and is_up_to_date(current, wanted):
        progress(f"{ref} up to date")
        _tag(current.id if current else ref, ORCHESTRATOR_LATEST)
        return []
    work = paths.state_dir() / "stage"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        context = Path(tmp)
        stage_wheels(root, context / "wheels", progress)
        progress(f"building {ref}")
        image_id = _docker_build(context, dockerfile, ref, wanted, {"BASE_IMAGE": BASE_REF},
                                 force, progress)
    _tag(image_id, ORCHESTRATOR_LATEST)
    return [ref, ORCHESTRATOR_LATEST]


def stage_wheels(root: Path, dest: Path, progress: Progress) -> None:
    """The project's wheel, its dependencies for the base's python and a pip wheel in
    ``dest``; pip may reach its index here, on the host, never in the build."""
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    progress("staging wheels: the project")
    run_streaming([*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), str(root)],
                  progress)
    project = next(dest.glob("ad_sandbox-*.whl"), None)
    if project is None:
        raise SandboxError("pip wheel produced no ad_sandbox wheel", hint="Read the output above.")
    constraints = dest.parent / "constraints.txt"
    constraints.write_text(_frozen(pip))
    progress("staging wheels: runtime dependencies (cp311 manylinux) and pip")
    platforms: list[str] = []
    for tag in _platform_tags():
        platforms += ["--platform", tag]
    run_streaming([*pip, "download", "--quiet", "--only-binary=:all:", *PYTHON_TAGS, *platforms,
                   "--constraint", str(constraints), "--dest", str(dest), str(project), "pip"],
                  progress)


def _frozen(pip: list[str]) -> str:
    """This environment's versions, as constraints: the image runs what was tested here."""
    done = subprocess.run([*pip, "freeze", "--exclude-editable"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SandboxError(f"pip freeze failed: {done.stderr.strip()[:300]}")
    return "".join(line + "\n" for line in done.stdout.splitlines()
                   if "==" in line and not line.startswith("ad-sandbox"))


def _platform_tags(machine: str | None = None) -> list[str]:
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        (machine or platform.machine()).lower(), (machine or platform.machine()).lower())
    # bookworm's glibc is 2.36: any manylinux wheel up to that runs there.
    return [f"manylinux_2_{minor}_{arch}" for minor in (36, 34, 28, 17)] + [
        f"manylinux2014_{arch}", f"linux_{arch}"]
