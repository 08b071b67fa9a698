"""What a container may ask of the model API: the relay as a capability firewall.

The relay forwards with the real credential, so whatever the API does for that credential a
container could ask for: upload files, start batches, have the API fetch URLs or run code.
Three rules close that (each refusal names its rule, and nothing refused is forwarded):

- *messages only*: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` (with no
  query or ``?beta=true``) are relayed; every other path and method is refused, the Files
  and Batches APIs included.
- *run token only*: the request's ``x-api-key`` and ``Authorization`` headers may hold its
  run token and nothing else, so a foreign key never rides along.
- *server tools*: features by which the API itself reaches outside the run — typed tools
  (``web_search_*``, ``web_fetch_*``, ``code_execution_*``, and any typed tool at all; only
  client tools, with no ``type`` or ``type: "custom"``, always pass), the MCP connector
  (``mcp_servers``), ``container``, Files API references (``file_id``, ``source: {type:
  file}``) and URL sources — pass only when the agent's ``server_tools`` names them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
RELAYED_QUERIES = frozenset({"", "beta=true"})
CLIENT_TOOL_TYPE = "custom"
_DATE = re.compile(r"_\d{8}$")
# Blocks whose `input` the model wrote (any JSON at all): not request features, never read.
_MODEL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


@dataclass(frozen=True)
class Refusal:
    """Why a request is not relayed: an HTTP status and an Anthropic error type."""

    status: int
    kind: str
    rule: str
    message: str

    @property
    def text(self) -> str:
        return f"ad-sandbox gateway: {self.message} (rule: {self.rule})"


def route_refusal(method: str, path: str, query: str) -> Refusal | None:
    """The *messages only* rule: None when ``method path?query`` may be relayed."""
    if method == "POST" and path in (MESSAGES_PATH, COUNT_TOKENS_PATH) \
            and query in RELAYED_QUERIES:
        return None
    shown = f"{path}?{query}" if query else path
    return Refusal(
        403, "permission_error", "messages only",
        f"{method} {shown} is not relayed; only POST {MESSAGES_PATH} and POST "
        f"{COUNT_TOKENS_PATH} (optionally ?beta=true) reach the model API",
    )


def presented_token(api_keys: Iterable[str], authorizations: Iterable[str]
                    ) -> str | Refusal | None:
    """The *run token only* rule, over every ``x-api-key`` and ``Authorization`` value.

    The one credential the request carries (still to be checked as a live run token), None
    when it carries none, or a refusal when it carries two different ones or an
    ``Authorization`` that is not a Bearer token.
    """
    values = {key.strip() for key in api_keys}
    for header in authorizations:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _foreign("an Authorization header that is not a Bearer run token")
        values.add(value.strip())
    values.discard("")
    if len(values) > 1:
        return _foreign("more than one credential (x-api-key and Authorization differ)")
    return values.pop() if values else None


def _foreign(what: str) -> Refusal:
    return Refusal(
        403, "permission_error", "run token only",
        f"the request carries {what}; only the run's own token may be sent, as x-api-key "
        "or Authorization: Bearer, and a request with another key is never forwarded",
    )


def body_refusal(body: dict[str, Any], allowed: frozenset[str], agent: str) -> Refusal | None:
    """The *server tools* rule: None when ``body`` asks for nothing ``allowed`` lacks."""
    found = _first_server_feature(body, allowed)
    if found is None:
        return None
    where, name = found
    if name is None:
        message = (f"{where} is not a client tool (an object with no type, or type "
                   "\"custom\"), so the relay cannot tell what it reaches")
    else:
        message = (f"{where} reaches outside the run through the model API; agent {agent!r} "
                   f"may use it only with agents.{agent}.server_tools: [{name}] in the config")
    return Refusal(403, "permission_error", "server tools", message)


def _first_server_feature(body: dict[str, Any], allowed: frozenset[str]
                          ) -> tuple[str, str | None] | None:
    """The first feature of ``body`` not allowed: where it is, and the name that would allow
    it (None for something no name allows: a malformed tool list)."""
    for field, name in (("mcp_servers", "mcp_servers"), ("container", "container")):
        if field in body and name not in allowed:
            return field, name
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "tools (not a list)", None
    for index, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(tool, dict) and ("type" not in tool or kind == CLIENT_TOOL_TYPE):
            continue
        if not isinstance(kind, str):
            return f"tools[{index}]", None
        if not _tool_allowed(kind, allowed):
            return f"tools[{index}] of type {kind!r}", _family(kind)
    for where in ("system", "messages"):
        feature = _content_feature(body.get(where))
        if feature is not None and feature not in allowed:
            label = "a Files API reference" if feature == "files" else "a URL source"
            return f"{label} in {where}", feature
    return None


def _family(kind: str) -> str:
    family = _DATE.sub("", kind)
    return "mcp_servers" if family == "mcp_toolset" else family


def _tool_allowed(kind: str, allowed: frozenset[str]) -> bool:
    return kind in allowed or _family(kind) in allowed


def _content_feature(content: Any) -> str | None:
    """``files`` or ``url_sources`` when content blocks reference a file or a URL."""
    # Iterative: a hostile body may nest as deep as the JSON parser allowed.
    stack: list[Any] = [content]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        kind = kind if isinstance(kind, str) else None  # a hostile body's type may be a dict
        if kind in ("file", "container_upload") or isinstance(item.get("file_id"), str):
            return "files"
        if kind == "url":
            return "url_sources"
        stack.extend(value for key, value in item.items()
                     if not (key == "input" and kind in _MODEL_INPUT_BLOCKS))
    return None
