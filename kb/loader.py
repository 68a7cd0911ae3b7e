"""Read files into validated documents, reporting every bad record with its file and line.

Formats: JSONL and JSON arrays of {"id"?, "text", "metadata"?}; CSV with a text column (other
columns become metadata, numbers typed); Markdown or text files, one document each, with YAML
front matter as metadata and the path inside the folder given (or --root) as the default id; BEIR
corpus files ({"_id", "title", "text"}).
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from kb import front_matter, json_input
from kb.config import Settings
from kb.errors import field_errors
from kb.schemas import DocumentIn, number_or_text

FORMATS = ("jsonl", "json", "csv", "md", "beir")
SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".md": "md",
    ".markdown": "md",
    ".txt": "md",
}


@dataclass(frozen=True)
class Problem:
    """A record that could not be read: where it is and what is wrong with it."""

    source: str
    line: int
    message: str
    unit: str = "line"  # "item": `line` counts the items of a JSON array, not lines

    @property
    def where(self) -> str:
        return _where(self.source, self.line, self.unit)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Item:
    source: str
    line: int
    doc: DocumentIn
    unit: str = "line"

    @property
    def where(self) -> str:
        return _where(self.source, self.line, self.unit)


def _where(source: str, line: int, unit: str) -> str:
    """file:line, or "file item N" where N counts a JSON array's items, not its lines."""
    return f"{source}:{line}" if unit == "line" else f"{source} {unit} {line}"


@dataclass(frozen=True)
class Options:
    """How to read records: CSV columns, and the settings that bound a document."""

    settings: Settings
    text_column: str = "text"
    id_column: str = "id"


@dataclass(frozen=True)
class Source:
    path: str  # a file, or "-" for standard input
    fmt: str
    root: Path | None = None  # the folder it was found in: text-file ids are relative to it


@dataclass
class Summary:
    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    duplicates: int = 0  # near-duplicates of stored documents found (allow: written; skip: not)
    problems: list[Problem] = field(default_factory=list)


def sources(paths: Iterable[str], fmt: str | None = None, root: Path | None = None) -> list[Source]:
    """What to read: files as given, folders as the files of known formats inside them.

    A text file's id is its path inside `root` when given, else inside the folder named (a
    file named itself: its own folder, so its name); `root` lets one file of a folder be
    loaded again under the id the folder's load gave it."""
    found: list[Source] = []
    for path in paths:
        folder = Path(path)
        if path != "-" and folder.is_dir():
            for file in sorted(folder.rglob("*")):
                kind = fmt or SUFFIXES.get(file.suffix.lower())
                if file.is_file() and kind and not file.name.startswith("."):
                    found.append(Source(str(file), kind, root or folder))
        else:
            kind = fmt or SUFFIXES.get(folder.suffix.lower(), "jsonl")
            found.append(Source(path, kind, root if path != "-" else None))
    return found


def estimate(found: Iterable[Source]) -> int | None:
    """How many records the sources hold, when that is cheap to know (for a progress bar)."""
    total = 0
    for source in found:
        if source.fmt == "md":
            total += 1
        elif source.fmt in {"jsonl", "csv"} and source.path != "-":
            try:
                with open(source.path, "rb") as stream:
                    lines = sum(1 for line in stream if line.strip())
            except OSError:
                return None
            total += lines - 1 if source.fmt == "csv" else lines
        else:
            return None
    return total


def input_bytes(found: Iterable[Source]) -> int | None:
    """The sources' total size in bytes; None when one is standard input."""
    total = 0
    for source in found:
        if source.path == "-":
            return None
        try:
            total += os.path.getsize(source.path)
        except OSError:
            return None
    return total


def read(source: Source, options: Options) -> Iterator[Item | Problem]:
    """Items and problems from one source, in file order."""
    reader = READERS[source.fmt]
    if source.path == "-":
        with _decoded(getattr(sys.stdin, "buffer", None), detach=True) as stream:
            yield from reader(stream or sys.stdin, "<stdin>", source, options)
        return
    try:
        with open(source.path, "rb") as raw, _decoded(raw) as stream:
            yield from reader(stream or raw, source.path, source, options)  # type: ignore[arg-type]
    except OSError as exc:
        yield Problem(source.path, 0, f"cannot read: {exc.strerror or exc}")


@contextmanager
def _decoded(raw: IO[bytes] | None, detach: bool = False) -> Iterator[IO[str] | None]:
    """`raw` as text: a leading byte-order mark dropped (a BOM made a CSV's first column
    "\ufeffid" and hid Markdown front matter), and bytes that are not UTF-8 kept as
    U+DC80..U+DCFF (surrogateescape), so the record holding one is reported, with its line,
    and the others load. `detach` leaves `raw` open (standard input)."""
    if raw is None:
        yield None
        return
    stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield stream
    finally:
        if detach:
            stream.detach()


_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _undecodable(text: str) -> str | None:
    """What is wrong when `text` holds a byte that was not UTF-8 (see _decoded), else None."""
    if text.isascii() or (found := _BAD_BYTE.search(text)) is None:
        return None
    return f"not UTF-8 text: byte 0x{ord(found.group()) - 0xDC00:02x}"


def _bad_line(text: str) -> int:
    """The line (from 1) of `text`'s first byte that was not UTF-8."""
    found = _BAD_BYTE.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else 1


def validate(
    data: Any, name: str, line: int, options: Options, unit: str = "line"
) -> Item | Problem:
    """One record as a DocumentIn, or the problem with it (fields named, as the API does)."""
    where = "item" if unit == "item" else "line"  # a CSV row is still cited by its line
    if not isinstance(data, dict):
        message = f"each {unit} must be a JSON object with a 'text' field"
        return Problem(name, line, message, where)
    try:
        json_input.check(data)
    except json_input.UnusableJSON as exc:
        return Problem(name, line, f"{exc.path or 'record'}: {exc.message}", where)
    try:
        doc = DocumentIn.model_validate(data, context={"settings": options.settings})
    except ValidationError as exc:
        errors = field_errors(exc, root="record")
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return Problem(name, line, message, where)
    return Item(name, line, doc, where)


def _jsonl(
    stream: IO[str], name: str, source: Source, options: Options
) -> Iterator[Item | Problem]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if bad := _undecodable(line):
            yield Problem(name, number, bad)
            continue
        try:
            data = json_input.parse(line)
        except ValueError as exc:
            yield Problem(name, number, f"invalid JSON: {exc}")
            continue
        yield validate(data, name, number, options)


def _beir(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    """A BEIR corpus.jsonl: {"_id", "title", "text"}; the text embedded is title + " " + text."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if bad := _undecodable(line):
            yield Problem(name, number, bad)
            continue
        try:
            data = json_input.parse(line)
            title, body = str(data.get("title") or "").strip(), str(data.get("text") or "")
            record = {"id": str(data["_id"]), "text": f"{title} {body}".strip()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            yield Problem(name, number, f"not a BEIR corpus line: {exc}")
            continue
        if title:
            record["metadata"] = {"title": title}
        yield validate(record, name, number, options)


def _json(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    content = stream.read()
    if bad := _undecodable(content):  # one JSON value: no record around it can be told apart
        yield Problem(name, _bad_line(content), f"{bad}; the file is not read")
        return
    try:
        data = json_input.parse(content)
    except ValueError as exc:
        yield Problem(name, getattr(exc, "lineno", 1), f"invalid JSON: {exc}")
        return
    if isinstance(data, dict) and isinstance(data.get("documents"), list):
        data = data["documents"]
    if not isinstance(data, list):
        yield Problem(name, 1, "a JSON file must hold an array of documents")
        return
    for index, entry in enumerate(data, start=1):
        yield validate(entry, name, index, options, unit="item")


def _csv(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    """Rows after the header, each cited by the line it starts on (blank lines counted)."""
    _allow_long_cells(options.settings)
    # strict: a quote left open is an error at the end of the file, not one record
    # silently swallowing every later row
    reader = csv.reader(stream, strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(name, start, f"{_csv_error(exc)}; the rest of the file is not read")
            return
        if not row:  # a blank line
            continue
        if header is None:
            if problem := _header_problem(row, options):
                yield Problem(name, start, problem)
                return
            header = row
            continue
        yield _csv_record(header, row, name, start, options)


def _allow_long_cells(settings: Settings) -> None:
    """Let a cell hold twice the longest text (csv's own limit, 131,072, is below the text
    limit): a text a little too long is that row's problem, and the limit still stops a
    runaway field before it holds a whole large file."""
    csv.field_size_limit(max(csv.field_size_limit(), 2 * settings.max_text_chars))


def _csv_error(exc: csv.Error) -> str:
    if "unexpected end of data" in str(exc):
        return "a quoted field opened in this row is never closed"
    if "field larger than field limit" in str(exc):
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    return f"invalid CSV: {exc}"


def _header_problem(header: list[str], options: Options) -> str | None:
    if bad := _undecodable(",".join(header)):
        return f"header: {bad}"
    if options.text_column not in header:
        return f"no '{options.text_column}' column (columns: {', '.join(header)})"
    named = [column for column in header if column]
    if repeated := sorted({column for column in named if named.count(column) > 1}):
        # a dict of the row keeps only the last of them: the others' cells would be lost
        return f"column names repeated in the header: {', '.join(repeated)}"
    return None


def _csv_record(
    header: list[str], row: list[str], name: str, line: int, options: Options
) -> Item | Problem:
    if len(row) > len(header):
        return Problem(name, line, "more fields than the header has columns")
    if bad := _undecodable("".join(row)):
        return Problem(name, line, bad)
    unnamed = [
        n for n, (key, value) in enumerate(zip(header, row, strict=False), 1) if not key and value
    ]
    if unnamed:
        return Problem(
            name, line, f"a value in column {unnamed[0]}, which the header leaves unnamed"
        )
    cells = dict(zip(header, row, strict=False))
    data: dict[str, Any] = {"text": cells.get(options.text_column)}
    if cells.get(options.id_column):
        data["id"] = cells[options.id_column]
    metadata = {
        key: number_or_text(value)
        for key, value in cells.items()
        if key not in {options.text_column, options.id_column} and key and value != ""
    }
    data["metadata"] = metadata or None
    return validate(data, name, line, options, unit="row")


def _text(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    content = stream.read()
    if bad := _undecodable(content):
        yield Problem(name, _bad_line(content), bad)
        return
    try:
        metadata, content = front_matter.split(content)
    except front_matter.FrontMatterError as exc:
        yield Problem(name, exc.line, f"front matter: {exc}")
        return
    try:
        default_id = _default_id(source)
    except ValueError:
        yield Problem(name, 1, f"not inside the --root folder {source.root}: no id for it")
        return
    doc_id = (metadata or {}).pop("id", default_id)
    yield validate({"id": doc_id, "text": content, "metadata": metadata or None}, name, 1, options)


def _default_id(source: Source) -> str | None:
    """The path inside the root folder, the name of a file given alone; none for standard
    input (every document read from it would share one id): the id is derived from the text."""
    if source.path == "-":
        return None
    path = Path(source.path)
    if source.root is None:
        return path.name
    # absolute without resolving links: a linked file inside the folder keeps its path there
    absolute = Path(os.path.abspath(path))
    return absolute.relative_to(os.path.abspath(source.root)).as_posix()


Reader = Callable[[IO[str], str, Source, Options], Iterator[Item | Problem]]
READERS: dict[str, Reader] = {
    "jsonl": _jsonl,
    "json": _json,
    "csv": _csv,
    "md": _text,
    "beir": _beir,
}
