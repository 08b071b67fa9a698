"""The stub model: a deterministic stand-in for the Anthropic Messages API (SPEC §5).

Directives in the last user text (see :mod:`orchestrator.stub.directives`)::

    [[reply: TEXT]]           answer TEXT verbatim
    [[bash: CMD]]             a Bash tool_use {"command": CMD}
    [[tool: NAME {json}]]     a tool_use of NAME with that input ({} when omitted)
    [[sleep: S]]              answer after S seconds (SSE: after message_start)
    [[status: CODE]]          that HTTP error with Anthropic's error body
    [[usage: IN OUT]]         report those token counts (default 10 in, 5 out)
    (none of the answers)     "echo: <the user text without directives>"

A user turn carrying tool_result blocks is answered "tool result: <text>".
"""

from orchestrator.stub.app import create_app
from orchestrator.stub.server import StubServer

__all__ = ["StubServer", "create_app"]
