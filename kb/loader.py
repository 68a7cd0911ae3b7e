"""Read files into validated documents, reporting every bad record with its file and line.

Formats: JSONL and JSON arrays of {"id"?, "text", "metadata"?}; CSV with a text column (other
columns become metadata, numbers typed); Markdown or text files, one document each, with YAML
front matter as metadata and the path relative to the folder given as the default id; BEIR
corpus files ({"_id", "title", "text"}).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from kb import json_input
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

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Item:
    source: str
    line: int
    doc: DocumentIn


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


def sources(paths: Iterable[str], fmt: str | None = None) -> list[Source]:
    """What to read: files as given, folders as the files of known formats inside them."""
    found: list[Source] = []
    for path in paths:
        folder = Path(path)
        if path != "-" and folder.is_dir():
            for file in sorted(folder.rglob("*")):
                kind = fmt or SUFFIXES.get(file.suffix.lower())
                if file.is_file() and kind and not file.name.startswith("."):
                    found.append(Source(str(file), kind, folder))
        else:
            found.append(Source(path, fmt or SUFFIXES.get(folder.suffix.lower(), "jsonl")))
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
        yield from reader(sys.stdin, "<stdin>", source, options)
        return
    try:
        with open(source.path, encoding="utf-8", newline="") as stream:
            yield from reader(stream, source.path, source, options)
    except OSError as exc:
        yield Problem(source.path, 0, f"cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        yield Problem(source.path, 0, f"not UTF-8 text: {exc.reason}")


def validate(
    data: Any, name: str, line: int, options: Options, unit: str = "line"
) -> Item | Problem:
    """One record as a DocumentIn, or the problem with it (fields named, as the API does)."""
    if not isinstance(data, dict):
        return Problem(name, line, f"each {unit} must be a JSON object with a 'text' field")
    try:
        json_input.check(data)
    except json_input.UnusableJSON as exc:
        return Problem(name, line, f"{exc.path or 'record'}: {exc.message}")
    try:
        doc = DocumentIn.model_validate(data, context={"settings": options.settings})
    except ValidationError as exc:
        errors = field_errors(exc, root="record")
        return Problem(name, line, "; ".join(f"{e['field']}: {e['message']}" for e in errors))
    return Item(name, line, doc)


def _jsonl(
    stream: IO[str], name: str, source: Source, options: Options
) -> Iterator[Item | Problem]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
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
    try:
        data = json_input.parse(stream.read())
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
    reader = csv.DictReader(stream)
    columns = reader.fieldnames or []
    if options.text_column not in columns:
        yield Problem(name, 1, f"no '{options.text_column}' column (columns: {', '.join(columns)})")
        return
    line = 1
    for row in reader:
        data: dict[str, Any] = {"text": row.get(options.text_column)}
        if row.get(options.id_column):
            data["id"] = row[options.id_column]
        metadata = {
            key: number_or_text(value)
            for key, value in row.items()
            if key not in {options.text_column, options.id_column}
            and key
            and value not in ("", None)
        }
        if None in row:
            yield Problem(name, line + 1, "more fields than the header has columns")
        else:
            data["metadata"] = metadata or None
            yield validate(data, name, line + 1, options, unit="row")
        line = reader.line_num


def _text(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    content = stream.read()
    metadata: dict[str, Any] | None = None
    if content.startswith("---\n") and (end := content.find("\n---", 4)) != -1:
        front, content = content[4:end], content[end + 4 :].lstrip("\n")
        try:
            metadata = _front_matter(front)
        except ValueError as exc:
            yield Problem(name, 1, f"front matter: {exc}")
            return
    path = Path(source.path)
    default_id = path.relative_to(source.root).as_posix() if source.root else path.name
    doc_id = (metadata or {}).pop("id", default_id)
    yield validate({"id": doc_id, "text": content, "metadata": metadata or None}, name, 1, options)


def _front_matter(text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("must be a mapping of key: value")
    return {str(key): _plain(value) for key, value in data.items()}


def _plain(value: Any) -> Any:
    """YAML dates become ISO strings, as a JSON record would carry them."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


Reader = Callable[[IO[str], str, Source, Options], Iterator[Item | Problem]]
READERS: dict[str, Reader] = {
    "jsonl": _jsonl,
    "json": _json,
    "csv": _csv,
    "md": _text,
    "beir": _beir,
}
