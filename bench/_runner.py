"""Discover ``bench/bench_*.py``, run them one after another, print one table, write a JSON report.

Exit code 0 even when a target is missed (the output is a report, not a gate); 1 only when a
benchmark crashed, 2 when the filter matched nothing.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

import bench
from bench._result import Result, console, fmt

RESULTS_DIR = Path(__file__).parent / "results"
PREFIX = "bench_"


def discover(filters: list[str]) -> list[str]:
    """Benchmark module names (without the prefix), sorted; only those containing a filter if given."""
    names = sorted(
        info.name.removeprefix(PREFIX) for info in pkgutil.iter_modules(bench.__path__) if info.name.startswith(PREFIX)
    )
    if filters:
        names = [name for name in names if any(f.lower() in name.lower() for f in filters)]
    return names


def machine() -> dict[str, Any]:
    """What the figures were measured on (the load average is read again at the end of the run)."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def _verdict(result: Result) -> str:
    if result.passed is None:
        return "[dim]info[/dim]"
    return "[green]PASS[/green]" if result.passed else "[red]MISS[/red]"


def render(results: dict[str, list[Result]], errors: dict[str, str]) -> Table:
    """The summary table: every result of every benchmark, crashes as red rows."""
    table = Table(title=f"Benchmarks ({os.cpu_count()} CPUs)", show_lines=False)
    for column in ("benchmark", "figure", "baseline", "ratio", "target", "verdict"):
        table.add_column(column, justify="right" if column in ("figure", "baseline", "ratio") else "left")
    for name, rows in results.items():
        for row in rows:
            ratio = row.ratio
            table.add_row(
                row.name,
                fmt(row.value, row.unit),
                fmt(row.baseline, row.unit),
                "-" if ratio is None else f"{ratio:.2f}x",
                row.target,
                _verdict(row),
            )
        if name in errors:
            table.add_row(name, "-", "-", "-", "crashed (traceback above)", "[red]ERROR[/red]")
    return table


def write_report(
    results: dict[str, list[Result]],
    errors: dict[str, str],
    seconds: dict[str, float],
    started: dict[str, Any] | None = None,
) -> Path:
    """``bench/results/latest.json``: machine (at the start and the end), then per benchmark its rows,
    duration and any crash."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "machine_at_start": started,
        "benchmarks": {
            name: {
                "seconds": round(seconds.get(name, 0.0), 1),
                "error": errors.get(name),
                "results": [row.as_json() for row in rows],
            }
            for name, rows in results.items()
        },
    }
    path = RESULTS_DIR / "latest.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; see the module docstring for the exit code."""
    filters = list(sys.argv[1:] if argv is None else argv)
    names = discover(filters)
    if not names:
        console.print(f"[red]no benchmark matches {filters}[/red]; available: {', '.join(discover([]))}")
        return 2
    started = machine()
    console.print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"load average {started['load_average'][0]:.2f}"
    )
    results: dict[str, list[Result]] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        console.rule(f"[bold]{name}")
        began = time.perf_counter()
        results[name] = []
        try:
            module = importlib.import_module(f"bench.{PREFIX}{name}")
            results[name] = asyncio.run(module.run())
        except Exception:
            errors[name] = traceback.format_exc()
            console.print(f"[red]benchmark {name} crashed[/red]")
            console.print(errors[name], markup=False, highlight=False)
        seconds[name] = time.perf_counter() - began
    console.rule()
    console.print(render(results, errors))
    path = write_report(results, errors, seconds, started)
    console.print(f"report: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 1 if errors else 0
