"""Staging the pinned ``claude`` binary on the host for the agent image build.

The npm platform package holds one self-contained binary; we fetch it with ``npm pack``
(no install, no node version constraint) and keep only ``package/claude``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths
from orchestrator.errors import SandboxError

Progress = Callable[[str], None]
_NPM_PACKAGE = "@anthropic-ai/claude-code-linux-{arch}"


@dataclass(frozen=True)
class StagedBinary:
    """The ``claude`` binary staged on the host, ready to be the agent build context."""

    path: Path
    sha256: str
    size: int


def claude_arch(machine: str | None = None) -> str:
    """The npm platform suffix for this machine: ``x64`` or ``arm64``."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return "x64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    raise SandboxError(
        f"no claude binary is published for {machine}",
        hint="Run ad-sandbox on an x86_64 or arm64 Linux host.",
    )


def stage_claude(version: str, progress: Progress) -> StagedBinary:
    """The pinned binary under ``<state>/stage/<version>/claude``, fetched with ``npm pack``
    the first time (the platform package holds the self-contained binary)."""
    dest = paths.state_dir() / "stage" / version / "claude"
    meta = dest.with_name("claude.sha256")
    if dest.is_file():  # only ever created by an atomic rename, so it is whole
        recorded = meta.read_text() if meta.is_file() else ""
        sha, _, known_size = recorded.strip().partition(" ")
        if known_size.isdigit() and int(known_size) == dest.stat().st_size:
            return StagedBinary(dest, sha, int(known_size))
        return _record_sha(dest, meta)
    if shutil.which("npm") is None:
        raise SandboxError(
            "npm is not installed (needed to fetch the claude binary)",
            hint="Install it (`apt-get install -y npm`, or scripts/bootstrap.sh).",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{_NPM_PACKAGE.format(arch=claude_arch())}@{version}"
    progress(f"fetching claude {version}: npm pack {spec}")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        run_streaming(["npm", "pack", "--silent", spec], progress, cwd=Path(tmp))
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise SandboxError(f"npm pack {spec} produced no single tarball")
        extract_binary(tarballs[0], dest)
    staged = _record_sha(dest, meta)
    progress(f"staged claude {version} ({staged.size // 1_000_000} MB)")
    return staged


def _record_sha(binary: Path, meta: Path) -> StagedBinary:
    staged = StagedBinary(binary, _sha256(binary), binary.stat().st_size)
    meta.write_text(f"{staged.sha256} {staged.size}\n")
    return staged


def extract_binary(tarball: Path, dest: Path) -> None:
    """Extract only ``package/claude`` from an npm tarball to ``dest`` (mode 0755)."""
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(tarball, "r:gz") as archive:
        try:
            member = archive.getmember("package/claude")
        except KeyError:
            raise SandboxError(f"{tarball.name} holds no package/claude") from None
        source = archive.extractfile(member)
        if source is None or not member.isfile():
            raise SandboxError(f"{tarball.name}: package/claude is not a file")
        with source, partial.open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    partial.chmod(0o755)
    os.replace(partial, dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_streaming(argv: list[str], progress: Progress, cwd: Path | None = None) -> None:
    """Run a host tool, passing each output line to ``progress``; raise on failure."""
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in _nonblank(proc.stdout):
            lines.append(line)
            progress(line)
    if proc.returncode != 0:
        raise SandboxError(
            f"{argv[0]} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}",
            hint="Read the output above; check the network to the package registries.",
            last_lines=lines[-20:],
        )


def _nonblank(stream: Iterable[str]) -> Iterator[str]:
    for line in stream:
        if line.strip():
            yield line.rstrip()
