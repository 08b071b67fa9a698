"""Everything about talking to the ``claude`` CLI, as pure logic (no Docker, no processes).

- :mod:`.prompt`: the dispatch protocol, the structured prompt, STATUS and JSON answers.
- :mod:`.invoke`: argv, environment and MCP configuration of one ``claude -p`` run.
- :mod:`.output`: parsing ``json`` and ``stream-json`` output.
- :mod:`.failure`: why a run failed, as an ``error_type`` and a hint.
"""

from orchestrator.claude.failure import classify_failure, succeeded
from orchestrator.claude.invoke import (
    GATEWAY_SERVER,
    build_argv,
    claude_env,
    merged_mcp_config,
    project_mcp_config,
    system_prompt,
)
from orchestrator.claude.output import (
    StreamEvent,
    StreamParser,
    describe_tool_use,
    parse_json_output,
    result_from_object,
)
from orchestrator.claude.prompt import (
    DISPATCH_PROTOCOL,
    build_prompt,
    parse_outcome,
    parse_response_json,
)

__all__ = [
    "DISPATCH_PROTOCOL",
    "GATEWAY_SERVER",
    "StreamEvent",
    "StreamParser",
    "build_argv",
    "build_prompt",
    "classify_failure",
    "claude_env",
    "describe_tool_use",
    "merged_mcp_config",
    "parse_json_output",
    "parse_outcome",
    "parse_response_json",
    "project_mcp_config",
    "result_from_object",
    "succeeded",
    "system_prompt",
]
