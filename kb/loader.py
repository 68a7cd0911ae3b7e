"""Read files into validated documents, in batches, with a report of every bad record."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from kb.config import Settings
from kb.schemas import DocumentIn

FORMATS = ("jsonl", "json")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


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


@dataclass
class Summary:
    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.added + self.updated + self.skipped + self.failed


def expand(paths: Iterable[str]) -> list[str]:
    """Paths to read: files as given, folders as the files of known formats inside them."""
    found: list[str] = []
    for path in paths:
        folder = Path(path)
        if path != "-" and folder.is_dir():
            found.extend(
                str(file)
                for file in sorted(folder.rglob("*"))
                if file.is_file() and file.suffix.lower() in SUFFIXES
            )
        else:
            found.append(path)
    return found


def read(path: str, fmt: str | None, settings: Settings) -> Iterator[Item | Problem]:
    """Items and problems from one path ('-' for standard input), in file order."""
    fmt = fmt or _guess(path)
    reader = READERS.get(fmt)
    if reader is None:
        yield Problem(path, 0, f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
        return
    if path == "-":
        yield from reader(sys.stdin, "<stdin>", settings)
        return
    try:
        with open(path, encoding="utf-8") as stream:
            yield from reader(stream, path, settings)
    except OSError as exc:
        yield Problem(path, 0, f"cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        yield Problem(path, 0, f"not UTF-8 text: {exc.reason}")


def _guess(path: str) -> str:
    return SUFFIXES.get(Path(path).suffix.lower(), "jsonl")


def _read_jsonl(stream: IO[str], source: str, settings: Settings) -> Iterator[Item | Problem]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            yield Problem(source, number, f"invalid JSON: {exc}")
            continue
        yield validate(data, source, number, settings)


def _read_json(stream: IO[str], source: str, settings: Settings) -> Iterator[Item | Problem]:
    text = stream.read()
    try:
        data = json.loads(text)
    except ValueError as exc:
        yield Problem(source, getattr(exc, "lineno", 1), f"invalid JSON: {exc}")
        return
    if isinstance(data, dict) and isinstance(data.get("documents"), list):
        data = data["documents"]
    if not isinstance(data, list):
        yield Problem(source, 1, "a JSON file must hold an array of documents")
        return
    for index, entry in enumerate(data):
        yield validate(entry, source, index + 1, settings, unit="item")


def validate(
    data: Any, source: str, line: int, settings: Settings, unit: str = "line"
) -> Item | Problem:
    """One record as a DocumentIn, or the problem with it (fields named, as the API does)."""
    if not isinstance(data, dict):
        return Problem(source, line, f"each {unit} must be a JSON object with a 'text' field")
    try:
        doc = DocumentIn.model_validate(data, context={"settings": settings})
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'record'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors(include_url=False)
        )
        return Problem(source, line, errors)
    return Item(source, line, doc)


READERS: dict[str, Callable[[IO[str], str, Settings], Iterator[Item | Problem]]] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
}
