"""What a benchmark reports (one row of the summary table per :class:`Result`), and where it prints."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

# Piped into a file or CI log, rich would wrap at 80 columns; the tables need more.
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass
class Result:
    """One measured figure, compared with a baseline measured in the same run.

    ``passed`` is None for figures reported for information only (no target). ``details`` goes to
    the JSON report only (raw samples, breakdowns); the table never shows it.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """value / baseline (None without a baseline)."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        """The row as plain JSON (ratio included)."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "details": self.details,
        }


def p50(samples: Sequence[float]) -> float:
    """Median."""
    return float(statistics.median(samples))


def fmt(value: float | None, unit: str) -> str:
    """A figure for the table: milliseconds without decimals (one below 100 ms, so a figure next to a
    20 ms target is not rounded onto it), anything else with up to three digits."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.1f} ms" if abs(value) < 100 else f"{value:,.0f} ms"
    if unit == "%":
        return f"{value:+.1f} %"
    return f"{value:.3g} {unit}".strip()
