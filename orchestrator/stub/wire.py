"""The Messages API wire format: the JSON message, its SSE event stream, error bodies.

Ids are derived from a hash of the request (model and messages), so the same request
always gets the same answer and no id depends on time or on other requests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from orchestrator.stub.directives import Plan

DEFAULT_MODEL = "claude-stub"
TEXT_CHUNK = 24  # split text so consumers must join several deltas

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (5xx → ``api_error``)."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def request_digest(body: dict[str, Any]) -> str:
    """A short stable hash of what decides the answer."""
    key = json.dumps([body.get("model"), body.get("messages")], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def content_blocks(plan: Plan, digest: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if plan.text is not None:
        blocks.append({"type": "text", "text": plan.text})
    for index, call in enumerate(plan.tools):
        tool_id = f"toolu_stub_{digest}_{index}"
        blocks.append({"type": "tool_use", "id": tool_id, "name": call.name, "input": call.input})
    return blocks


def message(plan: Plan, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer."""
    digest = request_digest(body)
    return {
        "id": f"msg_stub_{digest}",
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model") or DEFAULT_MODEL),
        "content": content_blocks(plan, digest),
        "stop_reason": plan.stop_reason,
        "stop_sequence": None,
        "usage": _usage(*plan.usage),
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def stream_head(plan: Plan, body: dict[str, Any]) -> bytes:
    """``message_start`` (input usage, output 0) and a ``ping``, sent before any delay."""
    start = dict(message(plan, body), content=[], stop_reason=None)
    start["usage"] = _usage(plan.usage[0], 0)
    return sse("message_start", {"type": "message_start", "message": start}) + sse(
        "ping", {"type": "ping"}
    )


def stream_body(plan: Plan, body: dict[str, Any]) -> Iterator[bytes]:
    """Every event after ``message_start``: the blocks, ``message_delta``, ``message_stop``."""
    for index, block in enumerate(content_blocks(plan, request_digest(body))):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"], TEXT_CHUNK)]
        else:
            start = dict(block, input={})
            raw = json.dumps(block["input"])
            half = len(raw) // 2
            parts = (raw[:half], raw[half:])
            deltas = [{"type": "input_json_delta", "partial_json": part} for part in parts]
        yield sse("content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": start})
        for delta in deltas:
            yield sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": delta})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": plan.usage[1]},
    })
    yield sse("message_stop", {"type": "message_stop"})
