"""CSV that is safe to open in a spreadsheet: the one way the project writes CSV.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab or a carriage
return) as a formula: ``=HYPERLINK("http://evil", "click")`` in a user agent would become a live link,
or worse, in the export its owner opens. As OWASP advises ("CSV Injection"), a text cell starting with one
of those characters is written with a leading single quote (``'=HYPERLINK(...)``), which spreadsheets show
as text. The quote is the only change: a reader gets the original back by removing a leading ``'`` that is
followed by one of the characters. Quoting is RFC 4180 by Python's ``csv`` module, so commas, quotes and
line breaks still round-trip.

Numbers the server produces (``int``, ``float``, ``Decimal``) are written as numbers, a negative one
included: they come from our code, never from a client, and a spreadsheet must still read them as numbers.
Every text cell is neutralized, whoever wrote it: a text column that merely looks numeric (``-5``) is the
price, and no export of ours has one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | float | Decimal


def neutralize(text: str) -> str:
    """``text`` with a leading ``'`` if a spreadsheet would take it for a formula, else unchanged."""
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text


def cell(value: object) -> Cell:
    """One value as a CSV cell: ``None`` empty, times ISO 8601, mappings and lists JSON, numbers as they
    are, any text neutralized."""
    if value is None:
        return ""
    if isinstance(value, int | float | Decimal):  # bool included: written True / False
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return neutralize(str(value))


class SafeCsvWriter:
    """Rows to CSV text (RFC 4180 quoting, CRLF line ends), every value through :func:`cell`.

    Made for streaming: each call returns the text of the rows it was given, ready to send.
    """

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def rows(self, rows: Iterable[Iterable[object]]) -> str:
        """The CSV text of ``rows``."""
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerows([cell(value) for value in row] for row in rows)
        return self._buffer.getvalue()
