"""Building the egress proxy image (``images/proxy``): Debian's squid and our policy helper.

Two steps, neither needing a registry: a root filesystem with ``squid-openssl`` made by
mmdebstrap and imported as ``ad-sandbox/proxy-rootfs:bookworm`` (rebuilt only when its
package list or dpkg excludes change), then a small ``docker build`` on it that adds the
configuration, the helper and the entry point (seconds, so editing ``squid.conf`` does not
redo the download). Both carry an inputs-hash label and are skipped when up to date.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ImageMissing
from orchestrator.runtime.images import (
    LABEL_HASH,
    SUITE,
    Progress,
    _docker_build,
    _drop_untagged,
    image_status,
    images_dir,
    inputs_hash,
    is_up_to_date,
    mmdebstrap_import,
)

PROXY_REPO = "ad-sandbox/proxy"
PROXY_REF = f"{PROXY_REPO}:latest"
ROOTFS_REF = "ad-sandbox/proxy-rootfs:bookworm"
PROXY_USER = "13:13"
"""Debian's ``proxy`` user and group: the proxy runs as it, never as root."""


def proxy_dir() -> Path:
    return images_dir() / "proxy"


def rootfs_inputs_hash(definition: Path) -> str:
    return inputs_hash(
        f"mmdebstrap minbase {SUITE}",
        (definition / "packages.txt").read_bytes(),
        (definition / "dpkg-excludes.cfg").read_bytes(),
    )


def proxy_inputs_hash(definition: Path, rootfs_id: str) -> str:
    """The root filesystem and every file of the build context, by name and content."""
    parts: list[bytes | str] = [rootfs_id]
    for path in sorted(p for p in definition.rglob("*") if p.is_file()):
        parts += [str(path.relative_to(definition)), path.read_bytes()]
    return inputs_hash(*parts)


def build_proxy_image(*, force: bool = False, progress: Progress) -> list[str]:
    """Build the root filesystem (when its packages changed) and ``ad-sandbox/proxy``;
    return the tags built (skipped ones excluded)."""
    definition = proxy_dir()
    built: list[str] = []
    rootfs_wanted = rootfs_inputs_hash(definition)
    rootfs = image_status(ROOTFS_REF)
    replaced: list[str] = []
    if force or not is_up_to_date(rootfs, rootfs_wanted):
        mmdebstrap_import(ROOTFS_REF, definition, [f"LABEL {LABEL_HASH}={rootfs_wanted}"],
                          progress)
        replaced += [rootfs.id] if rootfs is not None else []
        built.append(ROOTFS_REF)
        rootfs = image_status(ROOTFS_REF)
    else:
        progress(f"{ROOTFS_REF} up to date")
    if rootfs is None:
        raise ImageMissing(f"{ROOTFS_REF} is missing after its import")
    wanted = proxy_inputs_hash(definition, rootfs.id)
    current = image_status(PROXY_REF)
    if not force and is_up_to_date(current, wanted):
        progress(f"{PROXY_REF} up to date")
        return built
    progress(f"building {PROXY_REF}")
    image_id = _docker_build(definition, definition / "Dockerfile", PROXY_REF, wanted,
                             {"ROOTFS_IMAGE": ROOTFS_REF}, force, progress)
    if current is not None and current.id != image_id:
        replaced.insert(0, current.id)  # the old proxy first: it is the old rootfs's child
    for old in replaced:
        _drop_untagged(old)  # kept by the engine while a container still uses it
    return [*built, PROXY_REF]


def ensure_proxy_image(progress: Progress) -> None:
    """Build the proxy image only when it is missing."""
    if image_status(PROXY_REF) is None:
        build_proxy_image(progress=progress)
