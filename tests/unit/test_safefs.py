"""Host-side reads of project files never follow a symlink, never block, never read unbounded.

Beside the real attack (tests/security/test_catalog_symlinks.py): the pure file logic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.claude import project_mcp_config
from orchestrator.dispatch.catalog import _preview, detect_stacks
from orchestrator.errors import ConfigError
from orchestrator.safefs import RefusedPath, list_entries, open_directory, read_file, read_head


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY\n")
    return secret


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "a.md").write_text("a\n")
    (folder / "README.md").write_text("one\ntwo\r\nthree\n")
    return folder


def test_reads_regular_files_below_the_root(project: Path) -> None:
    assert read_file(project, "docs/a.md", limit=100) == b"a\n"
    assert read_file(project, "missing.md", limit=100) is None
    assert read_file(project / "nowhere", "README.md", limit=100) is None


@pytest.mark.parametrize("link", ["CLAUDE.md", "docs2/a.md"])
def test_a_symlink_anywhere_below_the_root_is_refused(
    project: Path, outside: Path, link: str
) -> None:
    if link.startswith("docs2"):
        (project / "docs2").symlink_to(outside.parent)  # a directory component
        link = "docs2/secret.txt"
    else:
        (project / link).symlink_to(outside)
    with pytest.raises(RefusedPath, match="symlink"):
        read_file(project, link, limit=100)


def test_a_symlink_pointing_inside_is_not_followed_either(project: Path) -> None:
    (project / "CLAUDE.md").symlink_to(project / "README.md")
    with pytest.raises(RefusedPath):
        read_file(project, "CLAUDE.md", limit=100)


def test_a_fifo_or_a_large_file_is_refused_without_blocking(project: Path) -> None:
    os.mkfifo(project / "CLAUDE.md")
    with pytest.raises(RefusedPath, match="not a regular file"):
        read_file(project, "CLAUDE.md", limit=100)
    (project / "big").write_bytes(b"x" * 101)
    with pytest.raises(RefusedPath, match="larger than 100"):
        read_file(project, "big", limit=100)
    assert read_head(project, "big", limit=10) == b"x" * 10


@pytest.mark.parametrize("path", ["/etc/passwd", "../secret.txt", "docs/../../secret.txt", ""])
def test_only_plain_relative_paths(project: Path, path: str) -> None:
    with pytest.raises(RefusedPath):
        read_file(project, path, limit=100)


def test_listing_leaves_symlinks_out(project: Path, outside: Path) -> None:
    (project / "package.json").symlink_to(outside)
    os.mkfifo(project / "pipe")
    assert list_entries(project) == {"docs": "dir", "README.md": "file", "pipe": "other"}


def test_open_directory_names_the_symlinked_component(tmp_path: Path) -> None:
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with open_directory(tmp_path / "real" / "inner") as fd:
        assert os.fstat(fd).st_ino == (tmp_path / "real" / "inner").stat().st_ino
    with pytest.raises(RefusedPath) as caught, open_directory(tmp_path / "link" / "inner"):
        pass
    assert caught.value.path == str(tmp_path / "link")


def test_preview_and_stacks_skip_what_points_outside(project: Path, outside: Path) -> None:
    (project / "CLAUDE.md").symlink_to(outside)
    (project / "package.json").symlink_to(outside)
    (project / "pyproject.toml").write_text("")
    assert _preview(project, 2) == "one\ntwo\n"
    assert detect_stacks(project) == ["python"]
    (project / "README.md").unlink()
    os.mkfifo(project / "README.md")
    assert _preview(project, 2) == ""  # a FIFO does not block the catalog


def test_mcp_json_symlink_is_a_config_error_not_a_read(project: Path, tmp_path: Path) -> None:
    host = tmp_path / "host.json"
    host.write_text(json.dumps({"mcpServers": {"CANARY": {"command": "x"}}}))
    (project / ".mcp.json").symlink_to(host)
    with pytest.raises(ConfigError, match="symlink") as caught:
        project_mcp_config(project)
    assert "CANARY" not in caught.value.one_line()
    (project / ".mcp.json").unlink()
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"calc": {"command": "x"}}}))
    assert project_mcp_config(project) == {"mcpServers": {"calc": {"command": "x"}}}
