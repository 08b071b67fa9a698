"""Turning a pydantic ValidationError on the config into one line a person can act on.

``agents.yaml line 12: agents.infra.timeout: -5 — must be greater than 0``: the file,
the line (from the YAML node tree), the key path, the bad value and the reason.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.config import Config

Loc = tuple[int | str, ...]
_PATH_FIRST = re.compile(r"^((?:agents|groups|settings)(?:\.[^\s.]+)+) (.+)$")
_QUOTED = re.compile(r"'([^']+)'")
_MAX_VALUE = 60


def describe_validation_error(
    exc: ValidationError, *, node: yaml.Node | None, source: str | None, model: Any = Config
) -> str:
    """The first error of ``exc`` on one line; ``node`` is the composed YAML for line numbers,
    ``model`` the type validated (the agents file's :class:`Config` unless said)."""
    errors = exc.errors()
    text = _describe(errors[0], node, source, model)
    if len(errors) > 1:
        more = len(errors) - 1
        text += f" (and {more} more error{'s' if more > 1 else ''})"
    return text


def _describe(err: ErrorDetails, root: yaml.Node | None, source: str | None,
              model: Any) -> str:
    kind = err["type"]
    reason = _reason(err)
    loc: Loc = tuple(err["loc"])
    show_value = kind not in ("extra_forbidden", "missing")
    match = _PATH_FIRST.match(reason) if not loc else None
    if match:
        # Cross-reference errors come from a model validator, whose loc is the root;
        # its message starts with the key path instead.
        loc, reason, show_value = tuple(match.group(1).split(".")), match.group(2), False
    path, found, target = _locate(root, loc, model, missing=kind == "missing")
    if kind == "extra_forbidden":
        reason = f"unknown key; allowed keys: {', '.join(_allowed_keys(loc[:-1], model))}"
    elif kind == "missing":
        reason = "required key is missing"
    quoted = _QUOTED.search(reason)
    if quoted and isinstance(target, yaml.MappingNode | yaml.SequenceNode):
        # The message quotes the culprit (a bad name, an unknown agent): point at its line.
        hit = _find_scalar(target, quoted.group(1))
        if hit is not None:
            found, show_value = hit, False
            if isinstance(target, yaml.MappingNode) and any(k is hit for k, _ in target.value):
                path.append(str(hit.value))
    line = f" line {found.start_mark.line + 1}" if found is not None else ""
    value = f": {_value(err, target)}" if show_value else ""
    where = f"{source}{line}: " if source else ""
    return f"{where}{'.'.join(path) or '(top level)'}{value} — {reason}"


def _reason(err: ErrorDetails) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be ") :]
    return msg


def _value(err: ErrorDetails, target: yaml.Node | None) -> str:
    if isinstance(target, yaml.ScalarNode):
        text = str(target.value)
        return text if text else "''"
    text = repr(err.get("input"))
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _locate(
    root: yaml.Node | None, loc: Loc, model: Any, *, missing: bool
) -> tuple[list[str], yaml.Node | None, yaml.Node | None]:
    """Walk ``loc`` through the node tree: (key path, node for the line, value node).

    Parts naming a union member (pydantic adds them to ``loc``) are not keys and are
    skipped; a key absent from the file keeps its name in the path and its parent's line.
    """
    path: list[str] = []
    line_node, value_node = root, root
    kinds: list[Any] = [model]
    for part in loc:
        tag = _union_tag(kinds, part)
        if tag is not None:
            kinds = tag
            continue
        kinds = [sub for kind in kinds for sub in _step(kind, part)]
        path.append(str(part))
        child = _child(value_node, part)
        if child is not None:
            line_node, value_node = child
        else:
            value_node = None
    return path, line_node, value_node


def _union_tag(kinds: list[Any], part: int | str) -> list[Any] | None:
    """The narrowed kinds when ``part`` names a union member rather than a key."""
    if len(kinds) < 2 or not isinstance(part, str):
        return None
    named = [k for k in kinds if getattr(k, "__name__", None) == part]
    if named:
        return named
    if "[" in part or part.startswith("constrained-"):
        return kinds
    return None


def _child(node: yaml.Node | None, part: int | str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item, item
    return None


def _find_scalar(node: yaml.Node, text: str) -> yaml.Node | None:
    if isinstance(node, yaml.ScalarNode):
        return node if node.value == text else None
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            children += [key, value]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    for child in children:
        hit = _find_scalar(child, text)
        if hit is not None:
            return hit
    return None


def _allowed_keys(loc: Loc, model: Any) -> list[str]:
    """Field names of the model(s) at ``loc`` (all members of a union)."""
    kinds: list[Any] = [model]
    for part in loc:
        nxt = [sub for kind in kinds for sub in _step(kind, part)]
        if nxt:
            kinds = nxt
    names: list[str] = []
    for kind in kinds:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names += [n for n in kind.model_fields if n not in names]
    return names


def _step(kind: Any, part: int | str) -> list[Any]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(str(part))
        return _flatten(field.annotation) if field else []
    origin = get_origin(kind)
    if origin is dict:
        return _flatten(get_args(kind)[1])
    if origin in (list, tuple) and isinstance(part, int):
        return _flatten(get_args(kind)[0])
    return []


def _flatten(kind: Any) -> list[Any]:
    origin = get_origin(kind)
    if origin is Annotated:
        return _flatten(get_args(kind)[0])
    if origin in (Union, types.UnionType):
        return [sub for arg in get_args(kind) for sub in _flatten(arg) if arg is not type(None)]
    return [kind]
