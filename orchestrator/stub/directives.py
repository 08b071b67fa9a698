"""Read a Messages API request and decide what the stub model answers.

The directives live in the text of the last message whose role is ``user``. Only the
user's own text counts: ``<system-reminder>…</system-reminder>`` spans that the CLI adds
(as separate text blocks or inline) are cut out first, so the echo and the directives
never see them. Each directive is ``[[name: argument]]``; brackets nest, so a bash test
such as ``[[bash: [[ -f x ]] && echo y]]`` keeps its inner ``[[ ]]``.

Answer directives (``reply``, ``bash``, ``tool``) build the content in the order
``reply`` text first, then one ``tool_use`` per ``bash``/``tool`` in prompt order.
Modifiers (``usage``, ``sleep``, ``status``) apply to the same turn only; the follow-up
turn that carries ``tool_result`` blocks answers ``tool result: <text>`` per result with
the default usage unless its own text has modifiers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_USAGE = (10, 5)
MAX_SLEEP_S = 3600.0
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_OPEN = re.compile(r"\[\[\s*(bash|tool|sleep|status|usage|reply)\s*:", re.IGNORECASE)


class BadRequest(ValueError):
    """The request or one of its directives cannot be answered (HTTP 400)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What to answer: text and tool calls, plus how (usage, delay, error status)."""

    text: str | None = None
    tools: tuple[ToolCall, ...] = ()
    usage: tuple[int, int] = DEFAULT_USAGE
    sleep_s: float = 0.0
    status: int | None = None

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tools else "end_turn"


def last_user_message(body: dict[str, Any]) -> dict[str, Any]:
    """The last entry of ``messages`` whose role is ``user`` (the CLI may append others)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: field required and must be a non-empty list")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    raise BadRequest("messages: no message with role 'user'")


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    raise BadRequest("messages: content must be a string or a list of blocks")


def user_text(message: dict[str, Any]) -> str:
    """The user's own text: text blocks joined by newlines, system reminders removed."""
    parts = []
    for block in _blocks(message):
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text = _REMINDER.sub("", block["text"]).strip()
            if text:
                parts.append(text)
    return "\n".join(parts)


def tool_results(message: dict[str, Any]) -> list[str]:
    """The text of each ``tool_result`` block (string content or its text blocks)."""
    results = []
    for block in _blocks(message):
        if block.get("type") != "tool_result":
            continue
        content = block.get("content", "")
        if isinstance(content, list):
            content = "\n".join(
                str(part.get("text", "")) for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        results.append(str(content))
    return results


def find_directives(text: str) -> tuple[list[tuple[str, str]], str]:
    """Return ``[(name, argument)]`` in order and the text with the directives cut out."""
    found: list[tuple[str, str]] = []
    rest: list[str] = []
    pos = 0
    while (match := _OPEN.search(text, pos)) is not None:
        end = _closing(text, match.end())
        if end is None:  # unclosed: leave it as plain text
            break
        rest.append(text[pos : match.start()])
        found.append((match.group(1).lower(), text[match.end() : end].strip()))
        pos = end + 2
    rest.append(text[pos:])
    return found, " ".join(piece.strip() for piece in rest if piece.strip())


def _closing(text: str, start: int) -> int | None:
    """Index of the ``]]`` that closes a directive opened before ``start``."""
    depth, i = 1, start
    while i < len(text) - 1:
        pair = text[i : i + 2]
        if pair == "[[":
            depth, i = depth + 1, i + 2
        elif pair == "]]":
            depth -= 1
            if depth == 0:
                return i
            i += 2
        else:
            i += 1
    return None


def _tool(argument: str) -> ToolCall:
    name, _, raw = argument.partition(" ")
    if not name:
        raise BadRequest("[[tool: NAME {json}]] needs a tool name")
    raw = raw.strip()
    if not raw:
        return ToolCall(name, {})
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"[[tool: {name} ...]]: input is not JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"[[tool: {name} ...]]: input must be a JSON object")
    return ToolCall(name, value)


def _number(name: str, argument: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(argument)
    except ValueError:
        raise BadRequest(f"[[{name}: {argument}]]: not a number") from None


def plan(body: dict[str, Any]) -> Plan:
    """Decide the answer to one ``POST /v1/messages`` body. Raises :class:`BadRequest`."""
    message = last_user_message(body)
    text = user_text(message)
    directives, plain = find_directives(text)
    reply: str | None = None
    tools: list[ToolCall] = []
    usage, sleep_s, status = DEFAULT_USAGE, 0.0, None
    for name, argument in directives:
        if name == "reply":
            reply = argument
        elif name == "bash":
            tools.append(ToolCall("Bash", {"command": argument}))
        elif name == "tool":
            tools.append(_tool(argument))
        elif name == "sleep":
            sleep_s = _number(name, argument, float)
            if not 0 <= sleep_s <= MAX_SLEEP_S:
                raise BadRequest(f"[[sleep: {argument}]]: must be 0..{MAX_SLEEP_S:g} seconds")
        elif name == "status":
            status = _number(name, argument, int)
            if not 400 <= status <= 599:
                raise BadRequest(f"[[status: {argument}]]: must be an HTTP error code 400..599")
        else:  # usage
            counts = argument.split()
            if len(counts) != 2 or not all(c.isdigit() for c in counts):
                raise BadRequest(f"[[usage: {argument}]]: expected two counts, IN OUT")
            usage = (int(counts[0]), int(counts[1]))
    results = tool_results(message)
    if results:
        reply = "\n".join(f"tool result: {result}" for result in results)
        tools = []
    elif reply is None and not tools:
        reply = f"echo: {plain}"
    return Plan(reply, tuple(tools), usage, sleep_s, status)
