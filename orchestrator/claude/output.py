"""Reading what `claude -p` prints: the ``json`` result object and the ``stream-json`` lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.models import ClaudeResult

ACTION_CHARS = 80
# Which tool input best says what a tool call does, in order of preference.
_ACTION_KEYS = (
    "command", "file_path", "notebook_path", "pattern", "path", "url", "query",
    "description", "prompt", "task", "agent",
)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else 0.0


def _input_tokens(usage: Any) -> int:
    """Input tokens including cache reads and writes: with caching, ``input_tokens`` alone
    is only the uncached tail of the prompt."""
    if not isinstance(usage, dict):
        return 0
    return sum(
        _int(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def result_from_object(obj: dict[str, Any]) -> ClaudeResult:
    """A :class:`ClaudeResult` from one ``type: result`` object."""
    subtype = str(obj.get("subtype") or "")
    usage = obj.get("usage")
    denied: list[str] = []
    for denial in obj.get("permission_denials") or []:
        name = denial.get("tool_name") if isinstance(denial, dict) else None
        if isinstance(name, str) and name not in denied:
            denied.append(name)
    status = obj.get("api_error_status")
    text = obj.get("result")
    return ClaudeResult(
        # An API error keeps subtype "success" with is_error true: trust is_error first.
        is_error=bool(obj.get("is_error", subtype != "success")),
        subtype=subtype,
        result=text if isinstance(text, str) else "",
        session_id=obj.get("session_id") if isinstance(obj.get("session_id"), str) else None,
        num_turns=_int(obj.get("num_turns")),
        cost_usd=_float(obj.get("total_cost_usd")),
        input_tokens=_input_tokens(usage),
        output_tokens=_int(usage.get("output_tokens")) if isinstance(usage, dict) else 0,
        denied_tools=denied,
        terminal_reason=obj.get("terminal_reason") or None,
        api_error_status=_int(status) or None,
        errors=[e if isinstance(e, str) else json.dumps(e) for e in obj.get("errors") or []],
        duration_ms=_int(obj.get("duration_ms")),
    )


def _load(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_json_output(stdout: str) -> ClaudeResult:
    """The result of ``--output-format json`` (or stream-json): the last ``type: result`` line.

    Raises ValueError when there is none, e.g. claude was killed or failed before starting.
    """
    for line in reversed(stdout.splitlines()):
        obj = _load(line)
        if obj is not None and obj.get("type") == "result":
            return result_from_object(obj)
    tail = stdout.strip()[-200:]
    raise ValueError(f"no result object in claude's output ({tail!r})")


def _one_line(text: str, limit: int = ACTION_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _same(text: str) -> str:
    return text


def describe_tool_use(name: str, tool_input: Any, clean: Callable[[str], str] = _same) -> str:
    """``"Bash: ls -la"``, ``"Read: src/app.py"``: a tool call as one short line."""
    if isinstance(tool_input, dict):
        for key in _ACTION_KEYS:
            value = tool_input.get(key)
            if isinstance(value, str) and value.strip():
                return _one_line(clean(f"{name}: {value}"))
        if tool_input:
            return _one_line(clean(f"{name}: {json.dumps(tool_input, sort_keys=True)}"))
    return _one_line(name)


@dataclass(frozen=True)
class StreamEvent:
    """One meaningful stream-json line."""

    type: str
    """``system``, ``assistant``, ``user``, ``result`` or whatever else claude printed."""
    subtype: str = ""
    action: str = ""
    """What this line shows the agent doing (a tool call or text), "" when nothing."""
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class StreamParser:
    """Incremental parser of ``--output-format stream-json --verbose``, one line at a time.

    Keeps a running view for progress reports (last action, tokens, session) and the final
    result. Tokens are live estimates until the ``result`` line replaces them with totals;
    claude reports cost only in the result.
    """

    def __init__(self) -> None:
        self.last_action = ""
        self.last_text = ""
        self.clean: Callable[[str], str] = _same
        """Applied to an action's whole text before it is cut short (secret redaction)."""
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.session_id: str | None = None
        self.model: str | None = None
        self._result: ClaudeResult | None = None
        self._message_id: str | None = None
        self.result_count = 0
        """``result`` lines seen: claude prints one; more means someone else wrote too."""

    def feed(self, line: str) -> StreamEvent | None:
        """Take one line; return its event, or None for blank, garbage and partial-message lines."""
        obj = _load(line)
        if obj is None or not isinstance(obj.get("type"), str):
            return None
        kind: str = obj["type"]
        if kind == "stream_event":  # --include-partial-messages: raw SSE, redundant for us
            return None
        if isinstance(obj.get("session_id"), str):
            self.session_id = obj["session_id"]
        action = ""
        if kind == "system" and obj.get("subtype") == "init":
            self.model = obj.get("model") if isinstance(obj.get("model"), str) else None
        elif kind == "assistant":
            action = self._assistant(obj.get("message"))
        elif kind == "user":
            self._message_id = None  # a tool result ends the model's message
        elif kind == "result":
            self.result_count += 1
            self._result = result_from_object(obj)
            self.input_tokens = self._result.input_tokens
            self.output_tokens = self._result.output_tokens
            self.cost_usd = self._result.cost_usd
            if self._result.session_id:
                self.session_id = self._result.session_id
        if action:
            self.last_action = action
        return StreamEvent(kind, str(obj.get("subtype") or ""), action, obj)

    def _assistant(self, message: Any) -> str:
        if not isinstance(message, dict):
            return ""
        # claude prints one line per content block, each repeating its message's usage.
        message_id = message.get("id")
        if not (isinstance(message_id, str) and message_id == self._message_id):
            self._message_id = message_id if isinstance(message_id, str) else None
            usage = message.get("usage")
            self.input_tokens += _input_tokens(usage)
            if isinstance(usage, dict):
                self.output_tokens += _int(usage.get("output_tokens"))
        action = ""
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                action = describe_tool_use(str(block.get("name") or "tool"), block.get("input"),
                                           self.clean)
            elif block.get("type") == "text" and str(block.get("text") or "").strip():
                self.last_text = str(block["text"])
                action = _one_line(self.clean(f"text: {self.last_text}"))
        return action

    def result(self) -> ClaudeResult | None:
        """The final result, or None when the stream ended without one (killed, truncated)."""
        return self._result
