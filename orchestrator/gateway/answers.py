"""What the model really answered: read from the bytes the relay passes to a container.

claude's ``result`` is printed by a process a hostile tool can impersonate (its stdout is a
pipe any process of the run's uid can reach). The gateway, though, sees every answer the
model gave the run. :class:`AnswerTap` reads the text blocks of each answer as it streams
past (SSE ``text_delta``\\ s or the JSON body) and, before the answer's last bytes go out,
hands the relay a :class:`RelayedAnswer`: digests of the texts the run's final result may
be, and the session the request named. The runner checks the result against the last one.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from orchestrator.state.answers import RelayedAnswer

MAX_TEXT = 16 * 1024 * 1024
"""Characters of answer text kept per answer; a longer answer records nothing it could match."""
MAX_BLOCKS = 64
SESSION_HEADER = "x-claude-code-session-id"


def text_digest(text: str) -> str:
    """The digest a result's text is compared by (surrounding whitespace ignored)."""
    return hashlib.sha256(text.strip().encode("utf-8", errors="surrogatepass")).hexdigest()


def candidate_digests(blocks: list[str]) -> tuple[str, ...]:
    """Digests of every text a final result may be, given the answer's text blocks.

    claude's result is the final answer's text: one block, or several joined; each block
    alone and the usual joins are accepted, nothing else.
    """
    texts = {*blocks, "".join(blocks), "\n".join(blocks), "\n\n".join(blocks)}
    return tuple(sorted({text_digest(text) for text in texts}))


class AnswerTap:
    """Follows one answer's bytes; :meth:`feed` says when the answer is complete."""

    def __init__(self, content_type: str, content_length: str | None,
                 session_id: str | None) -> None:
        self.sse = "text/event-stream" in content_type
        self.json = not self.sse and "json" in content_type
        self.session_id = session_id
        length = content_length or ""
        self._expected = int(length) if length.isdigit() else None
        self._received = 0
        self._buffer = b""
        self._blocks: dict[int, list[str]] = {}
        self._size = 0
        self._stop_reason: str | None = None
        self._message = False
        self._complete = False
        self.recorded = False

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes; True once, when they complete the answer."""
        if self._complete or not (self.sse or self.json):
            return False
        self._received += len(chunk)
        self._buffer += chunk
        if self.json:
            if self._expected is not None and self._received >= self._expected:
                return self._finish_json()
            if len(self._buffer) > MAX_TEXT:
                self.json, self._buffer = False, b""
            return False
        self._buffer = self._buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            self._event(event)
        if len(self._buffer) > MAX_TEXT:
            self.sse, self._buffer = False, b""
        return self._complete

    def finish(self) -> bool:
        """The stream ended: True when that completed an answer not yet reported."""
        if self._complete:
            return False
        if self.json and self._buffer:
            return self._finish_json()
        if self.sse and self._buffer.strip():
            self._event(self._buffer)
            self._buffer = b""
        return self._complete

    def answer(self) -> RelayedAnswer:
        blocks = ["".join(parts) for _, parts in sorted(self._blocks.items())]
        return RelayedAnswer(self.session_id, candidate_digests(blocks[:MAX_BLOCKS]),
                             self._stop_reason, time.time())

    def _finish_json(self) -> bool:
        body = _loads(self._buffer)
        self._buffer = b""
        if isinstance(body, dict) and body.get("type") == "message":
            content = body.get("content")
            for index, block in enumerate(content if isinstance(content, list) else []):
                if isinstance(block, dict) and block.get("type") == "text":
                    self._add(index, block.get("text"))
            reason = body.get("stop_reason")
            self._stop_reason = reason if isinstance(reason, str) else None
            self._complete = True
        return self._complete

    def _event(self, event: bytes) -> None:
        data = b"\n".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        payload = _loads(data)
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        index = payload.get("index")
        if kind == "message_start":
            self._message = True
        elif kind == "content_block_start" and isinstance(index, int):
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                self._add(index, block.get("text"))
        elif kind == "content_block_delta" and isinstance(index, int):
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                self._add(index, delta.get("text"))
        elif kind == "message_delta":
            delta = payload.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            self._stop_reason = reason if isinstance(reason, str) else self._stop_reason
        elif kind == "message_stop" and self._message:
            self._complete = True

    def _add(self, index: int, text: Any) -> None:
        if not isinstance(text, str) or index >= MAX_BLOCKS:
            return
        self._size += len(text)
        if self._size > MAX_TEXT:  # nothing will match: record that, not a truncation
            self._blocks = {0: ["\0answer too long to keep\0"]}
            self.sse = self.json = False
            self._complete = True
            return
        self._blocks.setdefault(index, []).append(text)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
