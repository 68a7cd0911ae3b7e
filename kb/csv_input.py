"""CSV files as records: a text column, an optional id column, every other non-empty cell a
metadata value (unquoted numbers and true/false typed as JSON spells them, a quoted cell kept
as text); each row cited by the line it starts on."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from kb.schemas import scalar_or_text
from kb.text_input import NUL_BYTE, nul_line, undecodable

# one cell's raw text: quoted (doubled quotes inside), or up to the next comma or line end
_CELL = re.compile(r'"(?:[^"]|"")*"?|[^,\r\n]*')


@dataclass(frozen=True)
class Row:
    """A row's record fields, or what is wrong with it, at the line the row starts on."""

    line: int
    fields: dict[str, Any]
    problem: str | None = None


DEFAULT_ID_COLUMN = "id"  # the id column when none is named, if the header has it


def rows(
    stream: IO[str], text_column: str, id_column: str | None, max_text_chars: int
) -> Iterator[Row]:
    """The rows after the header (blank lines counted in the line numbers, not read). A
    file that cannot be read on (a header without the text column, or without an id column
    named: its rows got ids derived from their text, silently; a quote never closed) ends
    with a problem row. With no id column named, one named DEFAULT_ID_COLUMN is used if the
    header has it."""
    _allow_long_cells(max_text_chars)
    # strict: a quote left open is an error at the end of the file, not one record
    # silently swallowing every later row
    lines: list[str] = []  # the raw lines of the row being read: which cells were quoted
    reader = csv.reader(_kept(stream, lines), strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        lines.clear()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(start, {}, f"{_csv_error(exc)}; the rest of the file is not read")
            return
        if not cells:  # a blank line
            continue
        if (line := nul_line(",".join(cells), start)) is not None:
            # a binary or UTF-16 file: one problem, not one a row (csv takes NULs since 3.11)
            yield Row(line, {}, f"{NUL_BYTE}; the rest of the file is not read")
            return
        if header is None:
            if problem := _header_problem(cells, text_column, id_column):
                yield Row(start, {}, problem)
                return
            header = cells
            continue
        quoted = _quoted("".join(lines))
        yield _record(header, cells, quoted, start, text_column, id_column or DEFAULT_ID_COLUMN)


def _kept(stream: IO[str], lines: list[str]) -> Iterator[str]:
    """The stream's lines, each also appended to `lines` as csv.reader takes it."""
    for line in stream:
        lines.append(line)
        yield line


def _quoted(raw: str) -> list[bool]:
    """Whether each cell of one row (its raw text, in Excel's dialect, as csv.reader reads
    it) was quoted: csv.reader does not say, and a quoted "1.10" is text, not 1.1."""
    flags, at = [], 0
    while True:
        flags.append(raw.startswith('"', at))
        at = _CELL.match(raw, at).end()  # type: ignore[union-attr]  # it matches "" too
        if not raw.startswith(",", at):
            return flags
        at += 1


def _allow_long_cells(max_text_chars: int) -> None:
    """Let a cell hold twice the longest text (csv's own limit, 131,072, is below the text
    limit): a text a little too long is that row's problem, and the limit still stops a
    runaway field before it holds a whole large file. The limit is the process's."""
    csv.field_size_limit(max(csv.field_size_limit(), 2 * max_text_chars))


def _csv_error(exc: csv.Error) -> str:
    if "unexpected end of data" in str(exc):
        return "a quoted field opened in this row is never closed"
    if "field larger than field limit" in str(exc):
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    return f"invalid CSV: {exc}"


def _header_problem(header: list[str], text_column: str, id_column: str | None) -> str | None:
    if bad := undecodable(",".join(header)):
        return f"header: {bad}"
    for column in (text_column, id_column):
        if column is not None and column not in header:
            return f"no '{column}' column (columns: {', '.join(header)})"
    named = [column for column in header if column]
    if repeated := sorted({column for column in named if named.count(column) > 1}):
        # a dict of the row keeps only the last of them: the others' cells would be lost
        return f"column names repeated in the header: {', '.join(repeated)}"
    return None


def _record(
    header: list[str],
    cells: list[str],
    quoted: list[bool],
    line: int,
    text_column: str,
    id_column: str,
) -> Row:
    if len(cells) > len(header):
        return Row(line, {}, "more fields than the header has columns")
    if len(cells) <= header.index(text_column):
        # not "text: text must be a string": the cell is missing, not of the wrong type
        cells_had = f"{len(cells)} cell{'s' if len(cells) != 1 else ''}"
        problem = f"no '{text_column}' cell: the row has {cells_had}, the header {len(header)}"
        return Row(line, {}, f"{problem} columns")
    if bad := undecodable("".join(cells)):
        return Row(line, {}, bad)
    pairs = list(zip(header, cells, strict=False))
    unnamed = [n for n, (key, value) in enumerate(pairs, 1) if not key and value]
    if unnamed:
        return Row(line, {}, f"a value in column {unnamed[0]}, which the header leaves unnamed")
    by_column = dict(pairs)
    fields: dict[str, Any] = {"text": by_column.get(text_column)}
    if by_column.get(id_column):
        fields["id"] = by_column[id_column]
    # cells found quoted stay text (quoted is one flag a cell, unless a dialect fooled it)
    as_text = dict(zip(header, quoted, strict=False)) if len(quoted) == len(cells) else {}
    metadata = {
        key: value if as_text.get(key) else scalar_or_text(value)
        for key, value in by_column.items()
        if key not in {text_column, id_column} and key and value != ""
    }
    fields["metadata"] = metadata or None
    return Row(line, fields)
