"""A pipeline's outcomes as a JUnit XML report (``ad-sandbox run --file ... --junit FILE``).

One ``<testcase>`` per task, named by its agent, index and first words; a failed task has
``<failure message="exit_reason: hint">`` with the error as its text; the answer and the cost
are in ``<system-out>``. CI systems (GitHub, GitLab, Jenkins) read this shape.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.dispatch.pipeline import PipelineResult, TaskOutcome

SUITE = "ad-sandbox"
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold at all (control characters an agent may print)."""


def junit_xml(result: PipelineResult, *, suite: str = SUITE) -> bytes:
    """The report as UTF-8 XML bytes."""
    failures = sum(not t.success and t.started for t in result.tasks)
    skipped = sum(not t.started for t in result.tasks)
    seconds = sum(t.duration_ms for t in result.tasks) / 1000
    suites = ET.Element("testsuites", name=suite, tests=str(len(result.tasks)),
                        failures=str(failures + skipped), time=f"{seconds:.3f}")
    node = ET.SubElement(suites, "testsuite", name=suite, tests=str(len(result.tasks)),
                         failures=str(failures + skipped), errors="0", skipped="0",
                         time=f"{seconds:.3f}")
    for task in result.tasks:
        _testcase(node, task, suite)
    ET.indent(suites)
    data: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return data


def write_junit(result: PipelineResult, path: Path) -> None:
    path.write_bytes(junit_xml(result))


def _testcase(parent: ET.Element, task: TaskOutcome, suite: str) -> None:
    case = ET.SubElement(parent, "testcase", classname=f"{suite}.{task.agent}",
                         name=_clean(task.name), time=f"{task.duration_ms / 1000:.3f}")
    if not task.success:
        # A task the budget kept from starting is a failure too: CI must not read it as passed.
        failure = ET.SubElement(case, "failure", message=_clean(task.failure_message()),
                                type=task.error_type or "failed")
        failure.text = _clean(task.error or "")
    out = ET.SubElement(case, "system-out")
    lines = [f"agent: {task.agent}", f"run: {task.run_id or '(not started)'}",
             f"exit_reason: {task.exit_reason}", f"cost_usd: {task.cost_usd:.6f}"]
    if task.expect is not None:
        lines.append(f"expect: {task.expect}")
    out.text = _clean("\n".join(lines) + "\n\n" + task.answer)


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)
