"""What the agent reads: the dispatch protocol, the structured prompt, and its answer's shape."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

from orchestrator.models import Outcome, RunRequest

DISPATCH_PROTOCOL = """\
# Dispatch protocol
You are running non-interactively as a dispatched agent, inside a sandbox. Another agent sent \
you this task and will read only your final answer; nobody can reply to you.
- Do not ask clarifying questions. When something is ambiguous, make the most reasonable \
assumption, say it in one line, and carry on.
- Work in the current project directory. Do what the task asks, nothing more.
- Make the final answer self-contained and concise: what you found or changed, and anything \
the caller must know or do next.
- End the final answer with exactly one last line:
  `STATUS: done` when the task is complete,
  `STATUS: partial` when only part is done (say what is left), or
  `STATUS: blocked` when you could not proceed (say why and what would unblock you)."""

JSON_INSTRUCTION = """\
Answer with exactly one JSON value (an object or an array) and no prose around it; a \
```json fence is fine. Put the `STATUS:` line after it, as the last line."""

_OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
# Tolerates markdown emphasis and a trailing full stop: "**STATUS: done**", "Status: Partial."
_STATUS_LINE = re.compile(
    r"^[\s*_`>]*status[\s*_`]*:[\s*_`]*(?P<outcome>[a-z]+)[\s*_`.]*$", re.IGNORECASE
)
_FENCE = re.compile(r"```[ \t]*(?:json[c5]?)?[ \t]*\n(?P<body>.*?)\n?[ \t]*```", re.DOTALL)


def build_prompt(request: RunRequest, *, shared_context: str = "") -> str:
    """The prompt sent on stdin: Goal, Dispatched by, Context, Task (empty sections omitted)."""
    parts = (shared_context.strip(), request.context.strip())
    context = "\n\n".join(part for part in parts if part)
    sections = [
        ("Goal", request.goal.strip()),
        ("Dispatched by", request.caller.strip()),
        ("Context", context),
        ("Task", request.task.strip()),
    ]
    if request.response_format == "json":
        sections.append(("Response format", JSON_INSTRUCTION))
    return "\n\n".join(
        f"## {title}\n{body}" for title, body in sections if body or title == "Task"
    ) + "\n"


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def parse_outcome(text: str) -> Outcome | None:
    """``done|partial|blocked`` from a ``STATUS:`` last non-empty line, else None."""
    match = _STATUS_LINE.match(_last_line(text))
    if not match:
        return None
    outcome = match.group("outcome").lower()
    return outcome if outcome in _OUTCOMES else None  # type: ignore[return-value]


def _strip_status(text: str) -> str:
    lines = text.rstrip().splitlines()
    if lines and _STATUS_LINE.match(lines[-1].strip()):
        lines.pop()
    return "\n".join(lines).strip()


def parse_response_json(text: str) -> Any:
    """The one JSON value of a ``response_format: json`` answer.

    Accepts a bare value, a ```json fence, or a value inside prose, with or without the
    trailing STATUS line. Raises ValueError when no JSON value is found.
    """
    body = _strip_status(text)
    candidates = [body, *(m.group("body").strip() for m in _FENCE.finditer(body))]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", body):
        try:
            value, _ = decoder.raw_decode(body, match.start())
        except ValueError:
            continue
        return value
    raise ValueError(f"the answer holds no JSON value: {body[:120]!r}")
