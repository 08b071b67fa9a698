"""Fast checks of the bad-input guards (tests/security/test_bad_input.py does the attacks)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.cli.agents import check_name
from orchestrator.config import Agent, Config, ModelApi, Pool, Settings
from orchestrator.configfile import parse_config, save_config, validate_config
from orchestrator.configyaml import MAX_ALIASES
from orchestrator.dispatch.dispatcher import open_dispatcher
from orchestrator.errors import ConfigError, UsageError
from orchestrator.models import RunRequest
from orchestrator.run.runlog import CappedLog
from orchestrator.runtime import docker_exec
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.state import StateStore
from orchestrator.textinput import check_arguments, read_task, require_utf8

PATH = Path("agents.yaml")


def _laughs(levels: int, width: int) -> str:
    lines = ["x:", "  - &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"  - &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nsettings:\n  allowed_roots: *l{levels - 1}\n"


# ---- YAML budgets -------------------------------------------------------------------------


def test_billion_laughs_is_refused_in_well_under_a_second() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        parse_config(_laughs(9, 9), PATH)
    assert time.monotonic() - started < 1.0
    assert caught.value.message.startswith("agents.yaml line ")
    assert "aliases expand it past" in caught.value.message


def test_too_many_aliases_are_refused_at_the_first_one_over() -> None:
    text = "anchors:\n  - &a 1\nsettings:\n  allowed_roots:\n" + "    - *a\n" * (MAX_ALIASES + 5)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    assert f"more than {MAX_ALIASES} YAML aliases" in caught.value.message
    assert f"line {5 + MAX_ALIASES}:" in caught.value.message


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigError, match="refers to a node containing it"):
        parse_config("settings:\n  allowed_roots: &a [x, *a]\n", PATH)


def test_deep_nesting_is_refused_not_a_traceback() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("settings: " + "[" * 5000 + "]" * 5000 + "\n", PATH)


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    text = "agents:\n" + (
        f"  a: {{directory: {tmp_path}, resources: &small {{cpus: 0.5, memory: 512m}}}}\n"
        f"  b: {{directory: {tmp_path}, resources: *small}}\n")
    config = parse_config(text, PATH)
    assert config.agents["b"].resources.cpus == 0.5


# ---- names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web\n", "web\r\n", "\nweb", "we b", ""])
def test_names_with_a_trailing_newline_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not valid"):
        check_name(name)
    with pytest.raises(ConfigError, match="must match"):
        validate_config({"agents": {name: {"directory": str(tmp_path)}}})
    with pytest.raises(ConfigError, match="must match"):
        validate_config({"groups": {name: {}}})


def test_secret_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secret name"):
        validate_config({"agents": {"a": {"directory": str(tmp_path),
                                          "secrets": {"TOKEN\n": {"env": "X"}}}}})
    check_name("web-api_2")


# ---- UTF-8 --------------------------------------------------------------------------------


def test_require_utf8_names_the_byte() -> None:
    require_utf8("héllo ✓", "the task")
    expected = r"the task is not valid UTF-8 \(byte 0xff at character 3\)"
    with pytest.raises(UsageError, match=expected):
        require_utf8("ab\udcffc", "the task")


def test_check_arguments_looks_into_lists() -> None:
    check_arguments({"task": "ok", "timeout": 3.0, "allowed_tool": ["Bash"], "x": None})
    with pytest.raises(UsageError, match="argument ALLOWED-TOOL"):
        check_arguments({"allowed_tool": ["Bash", "R\udce9ad"]})


def test_read_task_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("fix ✓\n".encode())))
    assert read_task("-") == "fix ✓\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"fix \xff")))
    with pytest.raises(UsageError, match=r"on stdin is not valid UTF-8 \(byte 0xff at byte 5\)"):
        read_task("-")
    with pytest.raises(UsageError):
        read_task("x\udcff")


def test_dispatch_refuses_a_lone_surrogate_before_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over MCP (HTTP) a JSON ``\\udcff`` escape reaches the dispatcher as a lone surrogate."""
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(tmp_path / "agents.yaml"))
    monkeypatch.setenv("AD_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    save_config(Config(settings=Settings(model_api=ModelApi(upstream="stub", credential=None),
                                         pool=Pool(warm_per_agent=0)),
                       agents={"proj": Agent(directory=str(tmp_path))}), tmp_path / "agents.yaml")
    runtime = FakeRuntime()

    async def main() -> None:
        async with open_dispatcher(runtime=runtime, gateway_host="127.0.0.1",
                                   image_id=lambda ref: "sha256:fake") as dispatcher:
            with pytest.raises(UsageError, match="argument TASK is not valid UTF-8"):
                await dispatcher.dispatch(RunRequest(agent="proj", task="a\udcffb"))

    anyio.run(main)
    with StateStore() as state:
        assert state.list_runs(limit=10) == []
    assert not [call for call in runtime.calls if call[0] == "exec"]


# ---- capped run log -----------------------------------------------------------------------


def test_capped_log_under_the_cap_is_untouched(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "r.log", 65536)
    for index in range(10):
        log.write(f"line {index}\n")
    log.close()
    assert (tmp_path / "r.log").read_text() == "".join(f"line {i}\n" for i in range(10))


def test_capped_log_keeps_head_marker_and_tail(tmp_path: Path) -> None:
    cap = 65536
    log = CappedLog(tmp_path / "r.log", cap)
    for index in range(100_000):
        log.write(f"line {index:06d} " + "x" * 40 + "\n")
    log.write('{"type":"result","result":"the end"}\n')
    log.close()
    data = (tmp_path / "r.log").read_bytes()
    assert len(data) <= cap
    text = data.decode()
    assert text.startswith("line 000000 ")
    assert "[ad-sandbox: dropped " in text and "settings.logs.max_bytes" in text
    assert text.endswith('{"type":"result","result":"the end"}\n')
    head, tail = text.split("[ad-sandbox: dropped ")
    assert head.endswith("\n") and len(tail.splitlines()) > 100


def test_capped_log_cuts_one_huge_chunk_and_counts_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    path.write_text("x" * 40_000)  # a re-attached run appends to its first process's log
    log = CappedLog(path, 65536)
    log.write("y" * 10_000_000)
    log.close()
    assert path.stat().st_size <= 65536 + 40_000 - 32768 + 200
    assert path.read_text().endswith("y" * 1000)


# ---- exec stdout splitting ----------------------------------------------------------------


def _frames(monkeypatch: pytest.MonkeyPatch, frames: list[bytes]) -> list[str]:
    @contextmanager
    def attached(api: Any, exec_id: str) -> Iterator[None]:
        yield None

    monkeypatch.setattr(docker_exec, "attached", attached)
    monkeypatch.setattr(docker_exec, "frames_iter",
                        lambda sock, tty: iter([(docker_exec.STDOUT, f) for f in frames]))
    lines: list[str] = []
    docker_exec.stream_output(None, "exec-1", lines.append, lambda text: None)  # type: ignore[arg-type]
    return lines


def test_stdout_lines_split_across_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _frames(monkeypatch, [b"a", b"b\nc", b"\n\nd\xe2\x9c", b"\x93"]) == ["ab", "c", "",
                                                                               "d✓"]


def test_an_endless_stdout_line_is_passed_on_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_exec, "MAX_LINE_CHARS", 1000)
    lines = _frames(monkeypatch, [b"z" * 300] * 10 + [b"\nend"])
    assert all(len(line) <= 1300 for line in lines)
    assert "".join(lines[:-1]) == "z" * 3000 and lines[-1] == "end"
