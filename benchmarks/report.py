"""Medians, ratios and tables: what one benchmark run reports (SPEC §10).

``python -m benchmarks.report [--readme] [--json PATH]`` renders the README's Performance
table from a results file (default ``benchmarks/results/latest.json``): printed, or with
``--readme`` written between the ``<!-- perf:start -->`` and ``<!-- perf:end -->`` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["ratio", "value", "info"]
REPO = Path(__file__).resolve().parent.parent
LATEST = REPO / "benchmarks" / "results" / "latest.json"
README = REPO / "README.md"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile (the largest value for fewer than ten samples)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


@dataclass
class Row:
    """One measured line: raw samples, a ratio against a reference measured in the same run,
    a ratio against the fixed peer (agent-dispatch), and targets on either."""

    key: str
    name: str
    samples: list[float]
    unit: str = "ms"
    kind: Kind = "info"
    """``ratio``: ``target`` bounds median / reference; ``value``: it bounds the median."""
    reference: str = ""
    """What the ratio is against (another row's name, or a formula)."""
    reference_value: float = math.nan
    target: float = math.nan
    peer_value: float = math.nan
    """The fixed peer's median for the same measure (same run)."""
    peer_target: float = math.nan
    runc_value: float = math.nan
    """For a run under gVisor: the same measure's median under runc (same run)."""
    skipped: str = ""
    """Why the row was not measured (``not measured: ...``); empty when it was."""
    notes: list[str] = field(default_factory=list)
    ok: bool = True
    """Correctness of what was measured (results present, no orphan...); a failed check fails
    the row whatever its timing."""

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def p90(self) -> float:
        return p90(self.samples)

    @property
    def ratio(self) -> float:
        if not self.reference_value or math.isnan(self.reference_value):
            return math.nan
        return self.median / self.reference_value

    @property
    def vs_peer(self) -> float:
        if not self.peer_value or math.isnan(self.peer_value):
            return math.nan
        return self.median / self.peer_value

    @property
    def vs_runc(self) -> float:
        if not self.runc_value or math.isnan(self.runc_value):
            return math.nan
        return self.median / self.runc_value

    def _checks(self) -> list[tuple[str, float, float]]:
        """(label, measured, bound) for every target this row has."""
        checks = []
        if not math.isnan(self.target) and self.kind != "info":
            value = self.ratio if self.kind == "ratio" else self.median
            checks.append(("target", value, self.target))
        if not math.isnan(self.peer_target):
            checks.append(("vs peer", self.vs_peer, self.peer_target))
        return checks

    @property
    def met(self) -> bool | None:
        checks = self._checks()
        if not checks:
            return None if self.ok else False
        return self.ok and all(not math.isnan(v) and v <= bound for _, v, bound in checks)

    @property
    def miss(self) -> str:
        """How far over the targets, in words; empty when met or without a target."""
        if self.met is not False:
            return ""
        if not self.ok:
            return "check failed: " + "; ".join(self.notes)
        words = []
        for label, value, bound in self._checks():
            if value <= bound:
                continue
            if label == "target" and self.kind == "value":
                words.append(f"{self.median:.1f} {self.unit} vs {bound:.1f} {self.unit}")
            else:
                words.append(f"{label} {value:.2f}x vs {bound:.2f}x ({value / bound - 1:.0%} over)")
        return "; ".join(words)

    def target_text(self) -> str:
        parts = []
        if not math.isnan(self.target) and self.kind == "ratio":
            parts.append(f"<= {self.target:.2f}x")
        elif not math.isnan(self.target) and self.kind == "value":
            parts.append(f"<= {self.target:.{_digits(self.target)}f} {self.unit}")
        if not math.isnan(self.peer_target):
            parts.append(f"peer <= {self.peer_target:.2f}x")
        return ", ".join(parts) or "-"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(samples=[round(s, 3) for s in self.samples], median=_num(self.median),
                    p90=_num(self.p90), ratio=_num(self.ratio), vs_peer=_num(self.vs_peer),
                    vs_runc=_num(self.vs_runc), met=self.met,
                    reference_value=_num(self.reference_value), target=_num(self.target),
                    peer_value=_num(self.peer_value), peer_target=_num(self.peer_target),
                    runc_value=_num(self.runc_value))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """A row back from :meth:`to_json` (JSON nulls become NaN)."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            if value is None and f.type == "float":
                value = math.nan
            if value is not None:
                kwargs[f.name] = value
        return cls(**kwargs)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _digits(value: float) -> int:
    return 2 if abs(value) < 20 else 0


def _fmt(value: float, digits: int | None = None) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.{_digits(value) if digits is None else digits}f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _cells(row: Row) -> tuple[str, ...]:
    met = {True: "yes", False: "NO", None: "-"}[row.met]
    name = f"{row.name} ({row.skipped})" if row.skipped else row.name
    return (name, str(len(row.samples)), _fmt(row.median), _fmt(row.p90), row.unit,
            row.reference or "-", _ratio(row.ratio), _ratio(row.vs_peer), _ratio(row.vs_runc),
            row.target_text(), met)


HEADER = ("measure", "n", "median", "p90", "unit", "vs", "ratio", "vs fixed peer", "vs runc",
          "target", "met")
LEFT = tuple(HEADER.index(h) for h in ("measure", "unit", "vs", "target"))
"""Columns of text, aligned left; the numbers align right."""


def table(rows: list[Row]) -> str:
    """A fixed-width table of every row, then its notes and its missed targets."""
    lines: list[tuple[str, ...]] = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) if i in LEFT else cell.rjust(widths[i])
                             for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    misses = [f"- {row.name} MISSED: {row.miss}" for row in rows if row.miss]
    return "\n".join(out + (["", *notes] if notes else []) + (["", *misses] if misses else []))


# --- README ---------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The README's Performance block from one results file."""
    rows = [Row.from_json(r) for r in results["rows"]]
    versions, machine = results.get("versions", {}), results.get("machine", {})
    head = (f"Run of {results.get('date', '?')[:10]}: {results.get('rounds', '?')} alternating "
            f"rounds on {machine.get('cpus', '?')} cores ({machine.get('cpu_model', '?')}), "
            f"{machine.get('memory_mib', 0) / 1024:.0f} GiB, Linux {machine.get('kernel', '?')}; "
            f"ad-sandbox {versions.get('ad_sandbox', '?')}, claude {versions.get('claude', '?')}"
            f", agent-dispatch {versions.get('agent_dispatch', '?')} (the peer), Python "
            f"{versions.get('python', '?')}. The peer runs the same pinned `claude` on the host "
            f"against the same stub model; \"fixed peer\" is agent-dispatch with its child's "
            f"stdin at /dev/null (as shipped, `claude` inherits the MCP pipe and waits 3 s). "
            f"\"vs runc\" compares a run under gVisor (`sandbox: {{runtime: runsc}}`) with "
            f"the same run under runc.")
    lines = [head, "", "| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---" if i in LEFT else "---:"
                            for i in range(len(HEADER))) + "|"]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in _cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratios compare medians measured in the same run. Generated by "
              "`python -m benchmarks.report --readme` from `benchmarks/results/latest.json`; "
              "`make bench` measures again (see `benchmarks/README.md`)."]
    words = {"start": "at its start", "during": "during it", "end": "at its end"}
    busy = [words.get(when, when) for when, c in results.get("conditions", {}).items()
            if c.get("pytest_processes")]
    if busy:
        when = " and ".join([", ".join(busy[:-1]), busy[-1]] if len(busy) > 1 else busy)
        lines.append(f"\nOther test processes were running on the machine {when}; "
                     "expect noise.")
    if not results.get("ok", True):
        lines.append(f"\nThis run did not pass its checks: {results.get('failure')}")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the perf markers replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} ... {END} block; add both markers under "
                         "the Performance heading")
    return text[:start + len(START)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--json", type=Path, default=LATEST, help="results file to render")
    parser.add_argument("--readme", nargs="?", type=Path, const=README, default=None,
                        help="rewrite the Performance block of this README (default: the repo's)")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.json}: {exc}; run `make bench` first", file=sys.stderr)
        return 1
    block = markdown(results)
    if args.readme is None:
        print(block)
        return 0
    try:
        args.readme.write_text(replace_block(args.readme.read_text(), block))
    except (OSError, ValueError) as exc:
        print(f"cannot update {args.readme}: {exc}", file=sys.stderr)
        return 1
    print(f"updated the Performance block of {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
