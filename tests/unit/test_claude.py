"""orchestrator.claude: prompt, argv, env, MCP config, output parsing, failure classes.

Fixtures under fixtures/claude/ are real outputs of claude 2.1.332 against a local stub API
(paths rewritten to the container's /workspace).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.claude import (
    DISPATCH_PROTOCOL,
    GATEWAY_SERVER,
    StreamParser,
    build_argv,
    build_prompt,
    classify_failure,
    claude_env,
    describe_tool_use,
    merged_mcp_config,
    parse_json_output,
    parse_outcome,
    parse_response_json,
    project_mcp_config,
    succeeded,
)
from orchestrator.config import Agent
from orchestrator.errors import ConfigError
from orchestrator.models import ClaudeResult, RunRequest

FIXTURES = Path(__file__).parent / "fixtures" / "claude"
SID = "0171c18c-de2c-4294-9be0-a2e6d994cc8e"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


# --- prompt ---------------------------------------------------------------------------


def test_prompt_has_all_sections_in_order() -> None:
    request = RunRequest(
        agent="infra", task="List the hosts.", context="Staging only.", goal="Plan a deploy",
        caller="planner",
    )
    prompt = build_prompt(request, shared_context="Group: platform.")
    assert prompt == (
        "## Goal\nPlan a deploy\n\n## Dispatched by\nplanner\n\n"
        "## Context\nGroup: platform.\n\nStaging only.\n\n## Task\nList the hosts.\n"
    )


def test_prompt_omits_empty_sections_but_keeps_task() -> None:
    assert build_prompt(RunRequest(agent="a", task="do it")) == "## Task\ndo it\n"
    assert build_prompt(RunRequest(agent="a", task="  ")) == "## Task\n\n"


def test_prompt_keeps_a_task_that_looks_like_a_flag() -> None:
    assert "## Task\n--help -rf /\n" in build_prompt(RunRequest(agent="a", task="--help -rf /"))


def test_prompt_json_format_asks_for_one_json_value() -> None:
    prompt = build_prompt(RunRequest(agent="a", task="t", response_format="json"))
    assert prompt.index("## Task") < prompt.index("## Response format")
    assert "exactly one JSON value" in prompt
    assert "JSON" not in build_prompt(RunRequest(agent="a", task="t"))


def test_protocol_demands_status_line_and_no_questions() -> None:
    for needle in ("STATUS: done", "STATUS: partial", "STATUS: blocked", "clarifying questions"):
        assert needle in DISPATCH_PROTOCOL


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("Did it.\nSTATUS: done", "done"),
        ("Half.\nstatus: PARTIAL\n\n  \n", "partial"),
        ("**STATUS: blocked**", "blocked"),
        ("Status: Done.", "done"),
        ("STATUS: done\nbut then more text", None),
        ("STATUS: finished", None),
        ("no status at all", None),
        ("", None),
    ],
)
def test_parse_outcome(text: str, outcome: str | None) -> None:
    assert parse_outcome(text) == outcome


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('[1, 2]\nSTATUS: done', [1, 2]),
        ('Here you go:\n```json\n{"hosts": ["a"]}\n```\nSTATUS: done', {"hosts": ["a"]}),
        ('```\n{"x": true}\n```', {"x": True}),
        ('The answer is {"n": 3} as asked.\nSTATUS: partial', {"n": 3}),
        ("42", 42),
    ],
)
def test_parse_response_json(text: str, value: Any) -> None:
    assert parse_response_json(text) == value


def test_parse_response_json_without_json_raises() -> None:
    with pytest.raises(ValueError, match="no JSON value"):
        parse_response_json("I could not do it.\nSTATUS: blocked")


# --- argv -----------------------------------------------------------------------------


def test_argv_new_run_full() -> None:
    agent = Agent(
        directory="/p", model="sonnet", permission_mode="acceptEdits",
        allowed_tools=["Read", "Bash(git log:*)"], disallowed_tools=["WebFetch"],
        instructions="Be terse.",
    )
    argv = build_argv(
        agent, session_id=SID, resume=False, max_budget_usd=0.5, mcp_config_path="/tmp/mcp.json"
    )
    assert argv[:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert flag_values(argv, "--model") == ["sonnet"]
    assert flag_values(argv, "--permission-mode") == ["acceptEdits"]
    assert flag_values(argv, "--allowedTools") == ["Read", "Bash(git log:*)"]
    assert flag_values(argv, "--disallowedTools") == ["WebFetch"]
    assert flag_values(argv, "--append-system-prompt") == [DISPATCH_PROTOCOL + "\n\nBe terse."]
    assert flag_values(argv, "--max-budget-usd") == ["0.5"]
    assert flag_values(argv, "--session-id") == [SID]
    assert "--resume" not in argv
    assert argv[-3:] == ["--mcp-config", "/tmp/mcp.json", "--strict-mcp-config"]


def test_argv_resume_minimal_json() -> None:
    argv = build_argv(
        Agent(directory="/p"), session_id=SID, resume=True, max_budget_usd=None,
        mcp_config_path=None, output_format="json",
    )
    assert argv[:4] == ["claude", "-p", "--output-format", "json"]
    assert flag_values(argv, "--resume") == [SID]
    for absent in ("--verbose", "--model", "--session-id", "--max-budget-usd", "--mcp-config",
                   "--strict-mcp-config", "--allowedTools", "--disallowedTools"):
        assert absent not in argv
    assert flag_values(argv, "--permission-mode") == ["bypassPermissions"]
    assert flag_values(argv, "--append-system-prompt") == [DISPATCH_PROTOCOL]


def test_argv_model_argument_overrides_agent_and_budget_is_plain() -> None:
    argv = build_argv(
        Agent(directory="/p", model="sonnet"), session_id=SID, resume=False, model="opus",
        max_budget_usd=2.0, mcp_config_path=None,
    )
    assert flag_values(argv, "--model") == ["opus"]
    assert flag_values(argv, "--max-budget-usd") == ["2"]


def test_argv_never_holds_the_task() -> None:
    agent = Agent(directory="/p")
    argv = build_argv(agent, session_id=SID, resume=False, max_budget_usd=1, mcp_config_path=None)
    prompt = build_prompt(RunRequest(agent="a", task="--unique-task-text"))
    assert not any("--unique-task-text" in arg for arg in argv)
    assert "--unique-task-text" in prompt


# --- env ------------------------------------------------------------------------------


def test_env_for_non_root() -> None:
    env = claude_env(
        base_url="http://172.30.0.1:8765/", run_token="tok",
        config_dir="/home/agent/.claude-config", uid=1000, api_timeout_ms=60000,
    )
    assert env["ANTHROPIC_BASE_URL"] == "http://172.30.0.1:8765"
    assert env["ANTHROPIC_API_KEY"] == "tok"
    assert env["CLAUDE_CONFIG_DIR"] == "/home/agent/.claude-config"
    assert "HOME" not in env  # the container's own HOME applies
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["API_TIMEOUT_MS"] == "60000"
    assert 0 < int(env["CLAUDE_CODE_MAX_RETRIES"]) <= 5  # bridges a restart, never minutes
    assert int(env["MCP_TOOL_TIMEOUT"]) >= 3600 * 1000
    assert "IS_SANDBOX" not in env
    assert all(isinstance(v, str) for v in env.values())


def test_env_for_root_sets_is_sandbox_and_explicit_home() -> None:
    env = claude_env(
        base_url="http://gw", run_token="t", config_dir="/cfg", uid=0, api_timeout_ms=1,
        home="/tmp/home",
    )
    assert env["IS_SANDBOX"] == "1"
    assert env["HOME"] == "/tmp/home"


# --- MCP config -----------------------------------------------------------------------


def test_project_mcp_config_absent(tmp_path: Path) -> None:
    assert project_mcp_config(tmp_path) is None


def test_project_mcp_config_reads_servers(tmp_path: Path) -> None:
    servers = {"db": {"command": "db-mcp", "args": ["--ro"]}}
    (tmp_path / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    assert project_mcp_config(tmp_path) == {"mcpServers": servers}


@pytest.mark.parametrize("content", ["{not json", '{"mcpServers": []}', "[1]"])
def test_project_mcp_config_invalid_names_the_file(tmp_path: Path, content: str) -> None:
    (tmp_path / ".mcp.json").write_text(content)
    with pytest.raises(ConfigError) as info:
        project_mcp_config(tmp_path)
    assert str(tmp_path / ".mcp.json") in str(info.value)


def test_merged_mcp_config() -> None:
    project = {"mcpServers": {"db": {"command": "x"}, GATEWAY_SERVER: {"command": "evil"}}}
    merged = merged_mcp_config(project, ("http://gw:1/mcp", "tok"))
    assert merged == {
        "mcpServers": {
            "db": {"command": "x"},
            GATEWAY_SERVER: {
                "type": "http", "url": "http://gw:1/mcp",
                "headers": {"Authorization": "Bearer tok"},
            },
        }
    }
    assert project["mcpServers"][GATEWAY_SERVER] == {"command": "evil"}  # input untouched
    assert merged_mcp_config(project, None) == {"mcpServers": project["mcpServers"]}
    assert merged_mcp_config(None, None) is None
    assert merged_mcp_config({"mcpServers": {}}, None) is None
    only_gateway = merged_mcp_config(None, ("http://gw/mcp", "t"))
    assert only_gateway is not None
    assert list(only_gateway["mcpServers"]) == [GATEWAY_SERVER]


# --- json output ----------------------------------------------------------------------


def test_parse_json_success() -> None:
    result = parse_json_output(fixture("json_success.json"))
    assert not result.is_error
    assert result.subtype == "success"
    assert result.result == "echo: first turn \nSTATUS: done"
    assert result.session_id == SID
    assert result.num_turns == 1
    assert result.cost_usd == pytest.approx(0.00014)
    assert (result.input_tokens, result.output_tokens) == (10, 5)
    assert result.terminal_reason == "completed"
    assert result.api_error_status is None
    assert result.duration_ms > 0
    assert parse_outcome(result.result) == "done"


def test_parse_json_prompt_starting_with_dashes_was_text() -> None:
    result = parse_json_output(fixture("json_dash_prompt.json"))
    assert result.result.startswith("echo: --help me with -x")


def test_parse_json_api_error_is_error_despite_success_subtype() -> None:
    result = parse_json_output(fixture("json_api_error_429.json"))
    assert result.subtype == "success"
    assert result.is_error
    assert result.api_error_status == 429
    assert result.terminal_reason == "api_error"


def test_parse_json_max_turns_has_no_result() -> None:
    result = parse_json_output(fixture("json_max_turns.json"))
    assert result.is_error and result.subtype == "error_max_turns"
    assert result.result == ""
    assert result.errors == ["Reached maximum number of turns (1)"]


def test_parse_json_permission_denials() -> None:
    result = parse_json_output(fixture("json_permission_denied.json"))
    assert not result.is_error
    assert result.denied_tools == ["Bash"]


def test_parse_json_takes_last_result_line_among_noise() -> None:
    stdout = "warning: something\n" + fixture("json_success.json") + "\n{broken\n\n"
    assert parse_json_output(stdout).session_id == SID
    assert parse_json_output(fixture("stream_tool_use.jsonl")).num_turns == 2


@pytest.mark.parametrize("stdout", ["", "garbage", '{"type": "assistant"}', "[1, 2]"])
def test_parse_json_without_result_raises(stdout: str) -> None:
    with pytest.raises(ValueError, match="no result object"):
        parse_json_output(stdout)


def test_parse_json_tolerates_odd_field_types() -> None:
    line = json.dumps({
        "type": "result", "is_error": False, "result": None, "num_turns": "3",
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 7},
        "permission_denials": [{"tool_name": "Write"}, {"tool_name": "Write"}, "x"],
        "errors": [{"message": "m"}], "api_error_status": None, "total_cost_usd": True,
    })
    result = parse_json_output(line)
    assert result.result == "" and result.num_turns == 0 and result.cost_usd == 0.0
    assert (result.input_tokens, result.output_tokens) == (105, 7)
    assert result.denied_tools == ["Write"]
    assert result.errors == ['{"message": "m"}']
    assert result.session_id is None


# --- stream-json ----------------------------------------------------------------------


def test_stream_tool_use_run() -> None:
    parser = StreamParser()
    actions = []
    for line in fixture("stream_tool_use.jsonl").splitlines():
        event = parser.feed(line)
        assert event is not None
        if event.action:
            actions.append(event.action)
        if event.type == "system":
            assert parser.session_id == "8c6c793b-aa56-4cc0-a459-b6ae2bbb1279"
            assert parser.result() is None
    assert actions == ["Bash: echo hi-from-bash", "text: tool said: hi-from-bash STATUS: done"]
    assert parser.last_action == actions[-1]
    assert parser.last_text == "tool said: hi-from-bash\nSTATUS: done"
    assert parser.model == "claude-opus-5-5"
    result = parser.result()
    assert result is not None and not result.is_error
    assert (parser.input_tokens, parser.output_tokens) == (20, 10)
    assert parser.cost_usd == pytest.approx(0.00028)
    assert result.num_turns == 2


def test_stream_live_tokens_before_result() -> None:
    parser = StreamParser()
    lines = fixture("stream_tool_use.jsonl").splitlines()
    for line in lines[:-1]:
        parser.feed(line)
    # Two model messages, each printed with the usage of its message_start.
    assert parser.input_tokens == 20
    assert parser.output_tokens == 2
    assert parser.cost_usd == 0.0


def test_stream_one_message_printed_as_several_blocks_counts_once() -> None:
    parser = StreamParser()
    message = {"id": "m1", "usage": {"input_tokens": 7, "output_tokens": 3}}
    for block in ({"type": "text", "text": "Looking."}, {"type": "tool_use", "name": "Read",
                  "input": {"file_path": "src/a.py"}}):
        parser.feed(json.dumps({"type": "assistant", "message": {**message, "content": [block]}}))
    assert (parser.input_tokens, parser.output_tokens) == (7, 3)
    assert parser.last_action == "Read: src/a.py"


def test_stream_partial_messages_are_ignored() -> None:
    parser = StreamParser()
    events = [parser.feed(line) for line in fixture("stream_partial_messages.jsonl").splitlines()]
    kinds = [event.type for event in events if event is not None]
    assert "stream_event" not in kinds
    assert kinds.count("assistant") == 2 and kinds[-1] == "result"
    assert parser.last_action.startswith("text: tool said:")
    result = parser.result()
    assert result is not None and result.denied_tools == []


def test_stream_garbage_and_truncated() -> None:
    parser = StreamParser()
    lines = fixture("stream_tool_use.jsonl").splitlines()
    junk = ["", "   ", "not json", "[1,2]", '{"no_type": 1}', '{"type": 5}', lines[1][:40]]
    for line in junk:
        assert parser.feed(line) is None
    assert parser.feed(lines[0]) is not None
    assert parser.feed(lines[1]) is not None
    assert parser.feed(lines[-1][: len(lines[-1]) // 2]) is None  # killed mid-line
    assert parser.result() is None
    assert parser.last_action == "Bash: echo hi-from-bash"
    assert parser.session_id is not None


def test_stream_odd_assistant_shapes_do_not_raise() -> None:
    parser = StreamParser()
    for obj in (
        {"type": "assistant"},
        {"type": "assistant", "message": "x"},
        {"type": "assistant", "message": {"content": ["x", {"type": "text", "text": "  "}]}},
        {"type": "assistant", "message": {"content": [{"type": "tool_use"}]}},
        {"type": "user", "message": {}},
        {"type": "rate_limit_event", "session_id": "s"},
    ):
        assert parser.feed(json.dumps(obj)) is not None
    assert parser.last_action == "tool"
    assert parser.session_id == "s"


@pytest.mark.parametrize(
    ("name", "tool_input", "action"),
    [
        ("Bash", {"command": "ls -la", "description": "list"}, "Bash: ls -la"),
        ("Read", {"file_path": "/workspace/a.py"}, "Read: /workspace/a.py"),
        ("Grep", {"pattern": "TODO", "path": "src"}, "Grep: TODO"),
        ("mcp__db__q", {"sql": "select 1"}, 'mcp__db__q: {"sql": "select 1"}'),
        ("TodoWrite", {}, "TodoWrite"),
        ("Bash", {"command": "echo " + "x" * 200}, "Bash: echo " + "x" * 68 + "…"),
        ("Bash", {"command": "a\n  b"}, "Bash: a b"),
    ],
)
def test_describe_tool_use(name: str, tool_input: Any, action: str) -> None:
    assert describe_tool_use(name, tool_input) == action
    assert len(action) <= 80


# --- failures -------------------------------------------------------------------------


def _result(**fields: Any) -> ClaudeResult:
    return ClaudeResult(**{"is_error": True, "session_id": SID, **fields})


def test_succeeded() -> None:
    ok = parse_json_output(fixture("json_success.json"))
    assert succeeded(ok, 0)
    assert not succeeded(ok, 1)
    assert not succeeded(None, 0)
    assert not succeeded(parse_json_output(fixture("json_api_error_401.json")), 0)


@pytest.mark.parametrize(
    ("name", "error_type", "needle"),
    [
        ("json_api_error_429.json", "usage_limit", "retry"),
        ("json_api_error_401.json", "permission", "credential"),
        ("json_api_error_529.json", "cli_error", "Retry in a moment"),
        ("json_max_budget.json", "budget", "max_budget_usd"),
        ("json_max_turns.json", "cli_error", "turn limit"),
        ("json_gateway_budget_402.json", "budget", "per_root"),
        ("json_gateway_token_401.json", "permission", "dispatch it again"),
    ],
)
def test_classify_real_results(name: str, error_type: str, needle: str) -> None:
    result = parse_json_output(fixture(name))
    kind, hint = classify_failure(result, 1, "")
    assert kind == error_type
    assert needle.lower() in hint.lower()


def test_classify_hints_name_the_session_to_resume() -> None:
    for name in ("json_max_budget.json", "json_max_turns.json"):
        result = parse_json_output(fixture(name))
        assert result.session_id is not None
        assert result.session_id in classify_failure(result, 1, "")[1]


@pytest.mark.parametrize(
    ("result", "exit_code", "error_type", "needle"),
    [
        (_result(api_error_status=403, result="API Error: 403 forbidden"), 1, "permission", ""),
        (_result(api_error_status=400, result="API Error: 400 ad-sandbox budget spent: per_root"),
         1, "budget", "per_root"),
        (_result(api_error_status=None, terminal_reason="api_error",
                 result="Claude AI usage limit reached"), 1, "usage_limit", ""),
        (_result(api_error_status=400, result="API Error: 400 bad request"), 1, "cli_error",
         "bad request"),
        (_result(api_error_status=500, result="API Error: 500 boom"), 1, "cli_error", "Retry"),
        (_result(subtype="error_during_execution", errors=["tool crashed"]), 0, "cli_error",
         "tool crashed"),
        (_result(subtype="error_during_execution"), 0, "cli_error", "no detail"),
        (_result(subtype="success", result="something odd"), 1, "cli_error", "something odd"),
        (_result(is_error=False, subtype="success"), 2, "cli_error", "code 2"),
        (_result(is_error=False, subtype="success"), 0, "cli_error", "nothing to classify"),
        (_result(terminal_reason="budget_exhausted"), 1, "budget", ""),
    ],
)
def test_classify_result_branches(
    result: ClaudeResult, exit_code: int, error_type: str, needle: str
) -> None:
    kind, hint = classify_failure(result, exit_code, "")
    assert kind == error_type
    assert needle in hint


@pytest.mark.parametrize(
    ("exit_code", "stderr", "error_type", "needle"),
    [
        (1, fixture("stderr_unknown_resume.txt"), "not_found", "without session_id"),
        (1, 'Error: --resume requires a valid session ID or session title when used with '
            '--print.', "not_found", ""),
        (1, fixture("stderr_session_in_use.txt"), "cli_error", "already in use"),
        (1, "Claude AI usage limit reached|1767225600", "usage_limit", "Retry later"),
        (1, "Invalid API key · Please run /login", "permission", "credential"),
        (None, "", "sandbox", "no exit status"),
        (127, "exec: claude: not found", "sandbox", "image build"),
        (137, "", "sandbox", "resources.memory"),
        (143, "", "sandbox", "killed"),
        (1, "Error: unknown option '--bogus'\n", "cli_error", "unknown option '--bogus'"),
        (3, "", "cli_error", "printed nothing"),
    ],
)
def test_classify_without_result(
    exit_code: int | None, stderr: str, error_type: str, needle: str
) -> None:
    kind, hint = classify_failure(None, exit_code, stderr)
    assert kind == error_type
    assert needle in hint


# --- the real CLI ------------------------------------------------------------------------


def _claude_binary() -> str:
    """The pinned claude binary, staged on the host the way the image build stages it."""
    from orchestrator import CLAUDE_VERSION
    from orchestrator.runtime.staging import stage_claude

    override = os.environ.get("AD_SANDBOX_CLAUDE_BIN")
    if override:
        return override
    return str(stage_claude(CLAUDE_VERSION, lambda line: None).path)


@pytest.mark.slow
def test_real_claude_accepts_our_argv_env_and_stdin_prompt(tmp_path: Path) -> None:
    """The argv, env and stdin prompt we build work with the pinned claude and the stub."""
    from orchestrator.stub import StubServer

    binary = _claude_binary()
    project, config = tmp_path / "project", tmp_path / "config"
    project.mkdir()
    config.mkdir()
    agent = Agent(directory=str(project), instructions="MARKER-INSTRUCTIONS-7")
    request = RunRequest(agent="a", task="--help -x [[bash: echo hi-there]]", caller="t")

    with StubServer() as stub:
        mcp = merged_mcp_config(None, ("http://127.0.0.1:9/mcp", "tok"))
        (tmp_path / "mcp.json").write_text(json.dumps(mcp))
        env = {
            "PATH": os.environ.get("PATH", ""),
            **claude_env(base_url=stub.url, run_token="run-token", config_dir=str(config),
                         uid=os.getuid(), api_timeout_ms=30_000, home=str(tmp_path)),
        }

        def run(argv: list[str], prompt: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [binary, *argv[1:]], input=prompt, capture_output=True, text=True, env=env,
                cwd=project, timeout=120, check=False,
            )

        sid = str(uuid.uuid4())
        argv = build_argv(agent, session_id=sid, resume=False, max_budget_usd=1.0,
                          mcp_config_path=str(tmp_path / "mcp.json"))
        first = run(argv, build_prompt(request))
        parser = StreamParser()
        events = [parser.feed(line) for line in first.stdout.splitlines()]
        init = next(e for e in events if e is not None and e.subtype == "init")
        result = parser.result()
        assert first.returncode == 0, first.stderr
        assert succeeded(result, first.returncode)
        assert result is not None and result.session_id == sid
        assert [s["name"] for s in init.data["mcp_servers"]] == [GATEWAY_SERVER]
        assert "Bash: echo hi-there" in [e.action for e in events if e is not None]
        system = json.dumps(stub.received[0]["body"]["system"])
        assert "MARKER-INSTRUCTIONS-7" in system and "STATUS: blocked" in system
        assert "--help -x" in json.dumps(stub.received[0]["body"]["messages"])

        resumed = run(
            build_argv(agent, session_id=sid, resume=True, max_budget_usd=None,
                       mcp_config_path=None, output_format="json"),
            "second turn",
        )
        assert resumed.returncode == 0, resumed.stderr
        assert parse_json_output(resumed.stdout).session_id == sid

        reused = run(argv, "again")
        assert reused.returncode != 0
        assert classify_failure(None, reused.returncode, reused.stderr)[0] == "cli_error"
        unknown = build_argv(agent, session_id=str(uuid.uuid4()), resume=True,
                             max_budget_usd=None, mcp_config_path=None, output_format="json")
        missing = run(unknown, "x")
        assert classify_failure(None, missing.returncode, missing.stderr)[0] == "not_found"
