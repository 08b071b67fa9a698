"""Keeping an agent's secret values out of everything the host shows or keeps.

A secret reaches text in many shapes besides its own: ``base64`` output (whose characters
depend on where the value starts within a 3-byte group), hex dumps, URL-encoded query
strings, a reversed string, or the JSON escaping of stream-json and transcript lines. Each
secret is turned into all those *forms* once; :func:`redact` replaces every form with a
marker naming the secret, in one pass, longest form first.

This is a safety net against accidental leaks, not a boundary: an agent that can read a
secret can always print it in a shape no list of forms covers (split, XOR-ed, one character
a line). Secrets are delivered as files for the agent to use; what it does with them is its
own output.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, quote_plus

MIN_RAW = 4
"""A shorter value is not redacted at all: it would blank ordinary words."""
MIN_DERIVED = 8
"""An encoded form shorter than this is skipped: random text matches short base64 or hex."""


def marker(name: str) -> str:
    """What replaces a secret: ``[redacted:NAME]``."""
    return f"[redacted:{name}]"


def _value(raw: bytes) -> bytes:
    # Files end with a newline the secret does not include; the text around it decides.
    return raw.strip()


def base64_forms(value: bytes) -> list[str]:
    """The stable inner part of ``value``'s base64 at each of the three alignments.

    A value preceded by ``k`` other bytes starts ``k % 3`` bytes into a 3-byte group; the
    characters of the groups it fills alone are the same whatever surrounds it. Standard and
    URL-safe alphabets both.
    """
    forms: list[str] = []
    for skip in range(3):
        whole = (len(value) - skip) // 3 * 3
        if whole <= 0:
            continue
        encoded = base64.b64encode(value[skip : skip + whole]).decode()
        forms += [encoded, encoded.replace("+", "-").replace("/", "_")]
    return forms


def forms_of(raw: bytes) -> list[str]:
    """Every shape of one secret value that :func:`redact` looks for (longest first)."""
    value = _value(raw)
    text = value.decode(errors="ignore")
    if len(text) < MIN_RAW:
        return []
    forms = {text}
    derived = {
        *base64_forms(value),
        binascii.hexlify(value).decode(),
        binascii.hexlify(value).decode().upper(),
        quote(text, safe=""),
        quote(text, safe="").lower(),
        quote_plus(text, safe=""),
        text[::-1],
        json.dumps(text)[1:-1],  # JSON escaping (stream-json, transcripts): ", \, newlines
        json.dumps(text, ensure_ascii=False)[1:-1],
    }
    forms |= {form for form in derived if len(form) >= MIN_DERIVED}
    return sorted(forms, key=lambda form: (-len(form), form))


@dataclass(frozen=True)
class Redactor:
    """A compiled set of secret forms; build once per run, apply to every line."""

    pattern: re.Pattern[str] | None
    names: Mapping[str, str]
    """Form → secret name."""

    def __call__(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(lambda match: marker(self.names[match.group(0)]), text)

    def pairs(self) -> list[tuple[str, str]]:
        """``(form, marker)`` for every form, longest first (for an in-container rewrite)."""
        forms = sorted(self.names, key=lambda form: (-len(form), form))
        return [(form, marker(self.names[form])) for form in forms]


def redactor(secrets: Mapping[str, bytes]) -> Redactor:
    """The :class:`Redactor` for ``secrets`` (name → raw value)."""
    return _compiled(tuple(sorted(secrets.items())))


@lru_cache(maxsize=64)
def _compiled(items: tuple[tuple[str, bytes], ...]) -> Redactor:
    names: dict[str, str] = {}
    for name, raw in items:
        for form in forms_of(raw):
            names.setdefault(form, name)
    if not names:
        return Redactor(None, {})
    # Longest first, so a value is replaced whole before any shorter form inside it.
    ordered: Iterable[str] = sorted(names, key=lambda form: (-len(form), form))
    return Redactor(re.compile("|".join(re.escape(form) for form in ordered)), names)


def redact(text: str, secrets: Mapping[str, bytes]) -> str:
    """Replace every form of every secret value in ``text`` with a marker naming the secret."""
    return redactor(secrets)(text)
