"""CSV exports with a header row (PostgreSQL's ``\\copy ... CSV HEADER``, SQLite's ``-csv``),
read row by row with the line each row starts on."""

from __future__ import annotations

import csv
import io
import sys

from authdb.importers.records import BadLine, UnreadableExport
from authdb.importers.values import shown

# A JSON metadata cell can be long; the default field limit (128 KiB) would stop the file.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def rows_with_lines(
    text: str, required: tuple[str, ...]
) -> tuple[list[tuple[int, dict[str, str]]], list[BadLine]]:
    """The data rows as {column: cell} with their first line, and rows of the wrong width.

    Raises UnreadableExport for a file without a header or without a ``required`` column.
    """
    # strict: a quote left open must not swallow every later row into one cell unnoticed.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise UnreadableExport("the file is empty (expected a CSV header row)")
        missing = [name for name in required if name not in header]
        if missing:
            raise UnreadableExport(
                f"the CSV header has no column {', '.join(missing)} "
                f"(found: {', '.join(map(shown, header[:12]))}{' ...' if len(header) > 12 else ''})"
            )
        rows: list[tuple[int, dict[str, str]]] = []
        errors: list[BadLine] = []
        start = reader.line_num + 1
        for row in reader:
            if row and len(row) != len(header):
                errors.append(BadLine(start, f"has {len(row)} cells, the header {len(header)}"))
            elif row:
                rows.append((start, dict(zip(header, row, strict=True))))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UnreadableExport(f"line {start}: not valid CSV ({exc})") from None
    return rows, errors
