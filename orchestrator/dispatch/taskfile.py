"""A pipeline's task file (``ad-sandbox run --file tasks.yaml``): a YAML list of tasks.

Read like the agents file: aliases bounded, duplicate keys refused, every error naming the
file, the line, the key and the bad value (exit 2)::

    - agent: docs
      task: Summarise the README in one sentence.
      expect: "(?i)readme"      # a regex the answer must match (re.search)
      timeout: 120
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from orchestrator.configerrors import describe_validation_error
from orchestrator.configyaml import BoundedLoader, compose
from orchestrator.errors import ConfigError

MAX_TASKS = 200
"""Tasks one file may hold: more is a batch system's job, not one invocation's."""


class PipelineTask(BaseModel):
    """One entry of a task file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: Annotated[str, Field(min_length=1)]
    task: Annotated[str, Field(min_length=1)]
    timeout: Annotated[float, Field(gt=0)] | None = None
    expect: str | None = None
    """A regular expression the answer must match (``re.search``) for the task to pass."""

    @field_validator("expect")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    def title(self, index: int) -> str:
        """``agent #index: the task's first words``: a test case's name."""
        words = " ".join(self.task.split()[:8])
        more = "…" if len(self.task.split()) > 8 else ""
        return f"{self.agent} #{index}: {words}{more}"


TaskList = list[PipelineTask]
_TASKS: TypeAdapter[TaskList] = TypeAdapter(TaskList)


@dataclass(frozen=True)
class TaskFile:
    """The validated tasks of one file, with the line each starts on (for later errors)."""

    path: Path
    tasks: list[PipelineTask]
    lines: list[int]

    def with_default_timeout(self, timeout: float) -> TaskFile:
        """The tasks with ``timeout`` where they set none (``run --file --timeout S``)."""
        tasks = [t if t.timeout is not None else t.model_copy(update={"timeout": timeout})
                 for t in self.tasks]
        return TaskFile(path=self.path, tasks=tasks, lines=self.lines)

    def where(self, index: int) -> str:
        """``tasks.yaml line 7 (task 2)``."""
        line = f" line {self.lines[index]}" if index < len(self.lines) else ""
        return f"{self.path.name}{line} (task {index})"


def load_tasks(path: Path) -> TaskFile:
    """Read and validate the task file at ``path``; :class:`ConfigError` when it is wrong."""
    hint = f"Fix {path} (a YAML list of {{agent, task, timeout?, expect?}}) and try again."
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no task file {path}", hint="Give the path of a YAML task list.",
                          path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the task file {path}: {exc}", hint=hint,
                          path=str(path)) from None
    node, data = _parse(text, path, hint)
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{path.name} line 1: the top level must be a list of tasks",
                          hint=hint, path=str(path))
    if not data:
        raise ConfigError(f"{path.name}: the task list is empty", hint=hint, path=str(path))
    if len(data) > MAX_TASKS:
        raise ConfigError(f"{path.name}: {len(data)} tasks; at most {MAX_TASKS} per file",
                          hint="Split the file.", path=str(path))
    try:
        tasks = _TASKS.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, node=node, source=path.name, model=TaskList),
            hint=hint, path=str(path)) from None
    lines = [item.start_mark.line + 1 for item in node.value]
    return TaskFile(path=path, tasks=tasks, lines=lines)


def _parse(text: str, path: Path, hint: str) -> tuple[yaml.Node | None, object]:
    loader = BoundedLoader(text)
    try:
        node = compose(loader, path)
        if node is not None:
            _reject_duplicates(node, path, hint)
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{path.name}{where}: malformed YAML: {reason}", hint=hint,
                          path=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: malformed YAML: {exc}", hint=hint,
                          path=str(path)) from None
    finally:
        loader.dispose()


def _reject_duplicates(node: yaml.Node, path: Path, hint: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicates(item, path, hint)
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, _ in node.value:
            if str(key.value) in seen:
                raise ConfigError(
                    f"{path.name} line {key.start_mark.line + 1}: {key.value}: duplicate key",
                    hint=hint, path=str(path))
            seen.add(str(key.value))
