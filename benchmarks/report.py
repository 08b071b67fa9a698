"""Medians, ratios and the table: what one benchmark run reports (SPEC §10)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["ratio", "ms", "info"]


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
    """One measured line: raw samples (ms), and a target checked on a ratio or on ms."""

    name: str
    samples_ms: list[float]
    kind: Kind = "info"
    reference: str = ""
    """What the ratio is against (another row's name, or a formula)."""
    reference_ms: float = math.nan
    target: float = math.nan
    notes: list[str] = field(default_factory=list)
    ok: bool = True
    """Correctness of what was measured (results present, no orphan...); a failed check fails
    the row whatever its timing."""

    @property
    def median_ms(self) -> float:
        return median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        return p90(self.samples_ms)

    @property
    def ratio(self) -> float:
        if self.kind != "ratio" or not self.reference_ms:
            return math.nan
        return self.median_ms / self.reference_ms

    @property
    def met(self) -> bool | None:
        if self.kind == "info" or math.isnan(self.target):
            return None if self.ok else False
        value = self.ratio if self.kind == "ratio" else self.median_ms
        return self.ok and not math.isnan(value) and value <= self.target

    @property
    def miss(self) -> str:
        """How far over the target, in words; empty when met or without a target."""
        if self.met is not False:
            return ""
        if not self.ok:
            return "check failed: " + "; ".join(self.notes)
        if self.kind == "ratio":
            over = self.ratio / self.target - 1
            return (f"{self.ratio:.2f}x vs {self.target:.2f}x: {over:.0%} over "
                    f"({self.median_ms - self.target * self.reference_ms:.0f} ms)")
        return f"{self.median_ms:.1f} ms vs {self.target:.1f} ms"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_ms=_num(self.median_ms), p90_ms=_num(self.p90_ms),
                    ratio=_num(self.ratio), met=self.met, reference_ms=_num(self.reference_ms),
                    target=_num(self.target))
        return data


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    """A fixed-width table: n, median, p90, ratio and target, met."""
    header = ("measure", "n", "median ms", "p90 ms", "vs", "ratio", "target", "met")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        if math.isnan(row.target):
            target = "-"
        elif row.kind == "ratio":
            target = f"<= {row.target:.2f}x"
        elif row.kind == "ms":
            target = f"<= {row.target:g} ms"
        else:
            target = "-"
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        small = row.median_ms < 20
        lines.append((row.name, str(len(row.samples_ms)), _fmt(row.median_ms, 2 if small else 0),
                      _fmt(row.p90_ms, 2 if small else 0), row.reference,
                      _fmt(row.ratio, 2) + ("x" if row.kind == "ratio" else ""), target, met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) if i in (0, 4) else cell.rjust(widths[i])
                             for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    misses = [f"- {row.name} MISSED: {row.miss}" for row in rows if row.miss]
    return "\n".join(out + (["", *notes] if notes else []) + (["", *misses] if misses else []))
