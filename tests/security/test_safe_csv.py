"""CSV injection: every CSV the project writes goes through ``agentpod.safe_csv``, which neutralizes formulas."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from agentpod.safe_csv import SafeCsvWriter

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("agentpod", "api", "activities", "workflows", "gateway", "bench", "chaos", "worker.py")
_CSV_WRITER = re.compile(r"\bcsv\s*\.\s*(writer|DictWriter)\b|from\s+csv\s+import\s+[^\n]*\b(writer|DictWriter)\b")


def _read(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    "value",
    ['=HYPERLINK("http://e","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1", "=", "-"],
)
def test_a_text_cell_a_spreadsheet_would_run_gets_a_leading_quote(value: str) -> None:
    assert _read(SafeCsvWriter().rows([[value, "plain"]])) == [[f"'{value}", "plain"]]


def test_other_cells_are_written_as_they_are_with_rfc4180_quoting() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = ["a, b", 'say "hi"', "two\r\nlines", " =not first", "'=already quoted", "", None, -5, -1.5, Decimal("-2")]
    text = SafeCsvWriter().rows([[*row, when, {"b": "=x", "a": -1}]])
    assert _read(text) == [
        [
            "a, b",
            'say "hi"',
            "two\r\nlines",
            " =not first",
            "'=already quoted",
            "",
            "",
            "-5",  # numbers the server computed stay numbers, negative ones included
            "-1.5",
            "-2",
            when.isoformat(),
            '{"a": -1, "b": "=x"}',
        ]
    ]


def test_the_writer_streams_each_call_as_its_own_chunk() -> None:
    writer = SafeCsvWriter()
    assert writer.rows([["id", "name"]]) == "id,name\r\n"
    assert writer.rows([["1", "=x"], ["2", "y"]]) == "1,'=x\r\n2,y\r\n"


def test_no_csv_is_written_outside_the_safe_writer() -> None:
    offenders = []
    for source in SOURCES:
        root = REPO / source
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            if path == REPO / "agentpod" / "safe_csv.py":
                continue
            if _CSV_WRITER.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == [], f"write CSV with agentpod.safe_csv.SafeCsvWriter, not the csv module: {offenders}"
