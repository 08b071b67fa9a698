"""Text from the command line and stdin must be UTF-8, or the command stops before it acts.

Python hands undecodable argv bytes over as lone surrogates (``\\udcff``), which fail much
later (encoding the prompt, writing SQLite) with a traceback; stdin would fail in the
middle of reading. Both become a one-line :class:`UsageError` (exit 2) naming the argument.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from orchestrator.errors import UsageError

_HINT = "Pass text encoded as UTF-8 (convert it, e.g. with `iconv -t UTF-8`), then run again."


def _bad_byte(value: str) -> tuple[int, int] | None:
    """(position, byte) of the first character that is not encodable as UTF-8, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(value[exc.start])
        # surrogateescape maps an undecodable byte b to U+DC00 + b.
        return exc.start, (char - 0xDC00 if 0xDC80 <= char <= 0xDCFF else char)
    return None


def require_utf8(value: str, what: str) -> None:
    """Raise :class:`UsageError` unless ``value`` is valid UTF-8 text."""
    bad = _bad_byte(value)
    if bad is not None:
        position, byte = bad
        raise UsageError(
            f"{what} is not valid UTF-8 (byte 0x{byte:x} at character {position + 1})",
            hint=_HINT,
        )


def check_arguments(arguments: Mapping[str, object]) -> None:
    """Check every text argument of a command (lists of text too) before the command runs."""
    for name, value in arguments.items():
        what = f"argument {name.upper()}".replace("_", "-")
        if isinstance(value, str):
            require_utf8(value, what)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, str):
                    require_utf8(item, what)


def read_task(task: str) -> str:
    """``task`` itself, or stdin's text when it is ``-``; stdin must decode as UTF-8."""
    if task != "-":
        require_utf8(task, "the task")
        return task
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"the task on stdin is not valid UTF-8 (byte 0x{data[exc.start]:x} at byte "
            f"{exc.start + 1})",
            hint=_HINT,
        ) from None
