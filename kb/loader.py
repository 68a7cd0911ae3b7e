"""Read files into validated documents, reporting every bad record with its file and line.

Formats: JSONL and JSON arrays of {"id"?, "text", "metadata"?}; CSV with a text column (other
columns become metadata, numbers typed); Markdown or text files, one document each, with YAML
front matter as metadata and the path inside the folder given (or --root) as the default id; BEIR
corpus files ({"_id", "title", "text"}).
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from kb import csv_input, front_matter, json_input, text_input
from kb.config import Settings
from kb.errors import field_errors
from kb.schemas import DocumentIn

log = logging.getLogger(__name__)
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
    """file:line, or "file item N" where N counts a JSON array's items, not its lines; the
    file alone for line 0, a problem of the whole file (or folder): "file:0" named no line."""
    if line == 0:
        return source
    return f"{source}:{line}" if unit == "line" else f"{source} {unit} {line}"


@dataclass(frozen=True)
class Options:
    """How to read records: CSV columns, and the settings that bound a document."""

    settings: Settings
    text_column: str = "text"
    id_column: str | None = None  # one named must be in the header; else "id" if it is


@dataclass(frozen=True)
class Source:
    path: str  # a file, or "-" for standard input
    fmt: str
    root: Path | None = None  # the folder it was found in: text-file ids are relative to it
    named: str | None = None  # the folder named (as spelt) that it was found in
    problem: str | None = None  # why a folder or file found inside it cannot be read


@dataclass
class Summary:
    added: int = 0
    updated: int = 0
    skipped: int = 0
    skipped_changed: int = 0  # of the skipped: stored in another version (--upsert replaces)
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
        # os.path.isdir, not Path.is_dir: a file in a folder that can be listed but not
        # entered raised PermissionError (a traceback); read() names it instead
        if path != "-" and os.path.isdir(path):
            found.extend(_inside(folder, path, fmt, root or folder))
        else:
            kind = fmt or SUFFIXES.get(folder.suffix.lower(), "jsonl")
            found.append(Source(path, kind, root if path != "-" else None))
    return found


def once(found: Iterable[Source]) -> tuple[list[Source], list[str], list[str]]:
    """`found` with each file (and standard input) read once; the other mentions left out
    (as spelt), and apart from them the links left out because their folder's walk found
    the file they point to. `kb load notes notes/a.md` stored notes/a.md twice, under two
    ids (the folder's path and the name alone), and `kb load - -` read stdin twice. The
    mention kept, at the place of the first, is the one through the outermost folder named:
    a text file's id is then the one `kb load` of that folder gives it, whatever the order
    of the names. A link beside its file in one walk is never that mention: it took the
    file's id (whichever sorted first), and `--upsert` left the file's document stale."""
    found = list(found)
    kept: list[Source] = []
    repeated: list[str] = []
    linked: list[str] = []
    files = {where for s in found if (where := _walked(s)) and not os.path.islink(s.path)}
    place: dict[str, int] = {}  # a file's place in `kept`
    for source in found:
        if _walked(source) in files and os.path.islink(source.path):
            linked.append(source.path)
            continue
        key = source.path if source.path == "-" else os.path.realpath(source.path)
        if source.problem is not None or key not in place:
            if source.problem is None:
                place[key] = len(kept)
            kept.append(source)
            continue
        first = kept[place[key]]
        if _id_parts(source) > _id_parts(first):
            kept[place[key]], source = source, first
        repeated.append(source.path)
    return kept, repeated, linked


def _walked(source: Source) -> tuple[str, str] | None:
    """A file found in a folder's walk: the folder named and the file's real path; None for
    one named itself, standard input or a problem."""
    if source.named is None or source.problem is not None:
        return None
    return source.named, os.path.realpath(source.path)


def _id_parts(source: Source) -> int:
    """How many parts of its path a text file's default id keeps (0: none)."""
    try:
        default = _default_id(source)
    except ValueError:  # outside --root
        return 0
    return len(Path(default).parts) if default else 0


def _inside(folder: Path, named: str, fmt: str | None, root: Path) -> list[Source]:
    """The files of known formats in `folder` and its subfolders, in path order, and a
    problem source for each folder that cannot be read (Path.rglob skipped those silently)
    and each file of a known format that cannot be reached: one in a folder listed but not
    entered (Path.is_file raised PermissionError, a traceback), a link whose target is gone
    or that loops (left out without a word). Hidden files and everything in hidden folders
    (.git, .obsidian, .venv) are left out; links to folders are not followed (a link to a
    parent would never end), and neither are pipes and devices."""
    files: list[Path] = []
    unreadable: list[Source] = []

    def refused(exc: OSError) -> None:
        where = os.fsdecode(exc.filename) if exc.filename is not None else str(folder)
        problem = f"cannot read this folder: {exc.strerror or exc}"
        unreadable.append(Source(where, "folder", root, named, problem))

    for top, dirs, names in os.walk(folder, onerror=refused):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        files.extend(Path(top, name) for name in names if not name.startswith("."))
    found: list[Source] = []
    for file in sorted(files):
        if not (kind := fmt or SUFFIXES.get(file.suffix.lower())):
            continue
        try:
            regular = stat.S_ISREG(os.stat(file).st_mode)
        except OSError as exc:
            problem = f"cannot read: {exc.strerror or exc}"
            found.append(Source(str(file), kind, root, named, problem))
            continue
        if regular:
            found.append(Source(str(file), kind, root, named))
    return unreadable + found


def estimate(found: Iterable[Source]) -> int | None:
    """How many records the sources hold, when that is cheap to know (for a progress bar).
    Only regular files are counted: a pipe, a FIFO or /dev/stdin (`kb load <(cmd)`) read
    here would be used up, and the load then found nothing in it (or waited forever)."""
    total = 0
    for source in found:
        if source.problem is not None:
            continue
        if source.fmt == "md":
            total += 1
        elif source.fmt in {"jsonl", "csv"} and _regular(source.path):
            try:
                with open(source.path, "rb") as stream:
                    lines = sum(1 for line in stream if line.strip())
            except OSError:
                return None
            total += lines - 1 if source.fmt == "csv" else lines
        else:
            return None
    return total


def _regular(path: str) -> bool:
    """Whether `path` is a regular file (not "-", a pipe, a FIFO or a device)."""
    return path != "-" and os.path.isfile(path)


def input_bytes(found: Iterable[Source]) -> int | None:
    """The sources' total size in bytes; None when one is standard input, a pipe or a
    device (whose size says nothing of what it will give)."""
    total = 0
    for source in found:
        if source.problem is not None:
            continue
        if not _regular(source.path):
            return None
        try:
            total += os.path.getsize(source.path)
        except OSError:
            return None
    return total


def read(source: Source, options: Options) -> Iterator[Item | Problem]:
    """Items and problems from one source, in file order. An error no reader expects (a
    fault in kb, not in the file) is that file's problem, its traceback logged: it ended
    the whole load with a traceback, the files after it unread."""
    if source.problem is not None:
        yield Problem(source.path, 0, source.problem)
        return
    reader = READERS[source.fmt]
    name = "<stdin>" if source.path == "-" else source.path
    try:
        if source.path == "-":
            if sys.stdin is None:  # started with standard input closed (`kb load - <&-`)
                yield Problem(name, 0, "cannot read: standard input is closed")
                return
            with text_input.decoded(getattr(sys.stdin, "buffer", None), detach=True) as stream:
                yield from reader(stream or sys.stdin, name, source, options)
            return
        with open(source.path, "rb") as raw, text_input.decoded(raw) as stream:
            yield from reader(stream or raw, name, source, options)  # type: ignore[arg-type]
    except OSError as exc:
        yield Problem(name, 0, f"cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:  # a UTF-16/32 mark on what is not (or not all) that
        encoding = exc.encoding.upper()[:6]  # UTF-16-LE: UTF-16, as the mark says
        message = f"not the {encoding} text its byte-order mark says ({exc.reason})"
        yield Problem(name, 0, f"{message}; the rest of the file is not read")
    except MemoryError:
        raise
    except Exception as exc:
        log.error(
            "unexpected error reading %s (a fault in kb: please report it)", name, exc_info=True
        )
        what = f"{type(exc).__name__}: {exc}"
        yield Problem(name, 0, f"cannot read ({what}); the rest of the file is not read")


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


def _lines(stream: IO[str], name: str) -> Iterator[tuple[int, str] | Problem]:
    """A line-per-record file's non-blank lines with their numbers, or the problem of one
    holding a byte that is not UTF-8; a NUL byte ends the file (a binary or UTF-16 file:
    one problem, not one a line)."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if "\x00" in line:
            yield _nul(name, number, "the rest of the file is not read")
            return
        if bad := text_input.undecodable(line):
            yield Problem(name, number, bad)
            continue
        yield number, line


def _jsonl(
    stream: IO[str], name: str, source: Source, options: Options
) -> Iterator[Item | Problem]:
    for found in _lines(stream, name):
        if isinstance(found, Problem):
            yield found
            continue
        number, line = found
        try:
            data = json_input.parse(line)  # checked by validate, which names the field
        except json.JSONDecodeError as exc:
            yield Problem(name, number, f"not valid JSON ({json_input.line_problem(exc)})")
            continue
        except ValueError as exc:  # nested too deep
            yield Problem(name, number, f"not valid JSON: {exc}")
            continue
        yield validate(data, name, number, options)


def _beir(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    """A BEIR corpus.jsonl: {"_id", "title", "text"}; the text embedded is title + " " + text."""
    for found in _lines(stream, name):
        if isinstance(found, Problem):
            yield found
            continue
        number, line = found
        try:
            record = _beir_record(json_input.parse(line))
        except ValueError as exc:
            yield Problem(name, number, f"not a BEIR corpus line: {exc}")
            continue
        yield validate(record, name, number, options)


def _beir_record(data: Any) -> dict[str, Any]:
    """A BEIR line's record, or a ValueError saying what it lacks (a KeyError said only
    "'_id'")."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "_id" not in data:
        raise ValueError("no '_id'")
    title, body = str(data.get("title") or "").strip(), str(data.get("text") or "")
    record: dict[str, Any] = {"id": str(data["_id"]), "text": f"{title} {body}".strip()}
    if title:
        record["metadata"] = {"title": title}
    return record


def _json(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    content = stream.read()
    # one JSON value: no record around a bad byte can be told apart
    if (problem := _unreadable(content, name, "; the file is not read")) is not None:
        yield problem
        return
    try:  # an item with a key given twice is that item's problem (validate), not the file's
        data = json_input.parse(content, keep_repeated=True)
    except ValueError as exc:
        if getattr(exc, "msg", None) == "Extra data":  # more values after the first one:
            # JSON lines in a .json file (`kb export > kb.json`), read as such
            yield from _jsonl(io.StringIO(content), name, source, options)
            return
        yield Problem(name, getattr(exc, "lineno", 1), f"invalid JSON: {exc}")
        return
    if isinstance(data, json_input.Repeated):  # {"documents": [...]} itself
        yield Problem(name, 1, f"invalid JSON: {data.problem}")
        return
    if isinstance(data, dict) and isinstance(data.get("documents"), list):
        data = data["documents"]
    if not isinstance(data, list):
        yield Problem(name, 1, "a JSON file must hold an array of documents")
        return
    for index, entry in enumerate(data, start=1):
        yield validate(entry, name, index, options, unit="item")


def _csv(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    columns = (options.text_column, options.id_column)
    for row in csv_input.rows(stream, *columns, options.settings.max_text_chars):
        if row.problem is not None:
            yield Problem(name, row.line, row.problem)
        else:
            yield validate(row.fields, name, row.line, options, unit="row")


# Characters a text file may hold past KB_MAX_TEXT_CHARS: its front matter (a document's
# metadata takes at most 64 KiB as JSON; YAML spells it longer).
FRONT_MATTER_CHARS = 1024 * 1024


def _text(stream: IO[str], name: str, source: Source, options: Options) -> Iterator[Item | Problem]:
    # read up to what a document can hold: read whole, a 400 MB log among the notes took
    # 894 MB before its text was refused as too long (review helper 81)
    most = options.settings.max_text_chars + FRONT_MATTER_CHARS
    content = stream.read(most + 1)
    if len(content) > most:
        limit = options.settings.max_text_chars
        yield Problem(
            name,
            1,
            f"the file holds more than {most:,} characters: a document's text may "
            f"hold {limit:,} (KB_MAX_TEXT_CHARS) and its front matter about a million",
        )
        return
    if (problem := _unreadable(content, name)) is not None:  # its one document
        yield problem
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
    if doc_id is default_id and default_id and (bad := text_input.undecodable(default_id)):
        # it said "id: holds a lone UTF-16 surrogate (\udce9)" of an id never written
        yield Problem(name, 1, f"the file's name, its id, is {bad}: rename it or set an id")
        return
    yield validate({"id": doc_id, "text": content, "metadata": metadata or None}, name, 1, options)


def _unreadable(content: str, name: str, undecodable_then: str = "") -> Problem | None:
    """The problem of a file read whole (one JSON value, one text document) that holds a NUL
    byte or bytes that are not UTF-8; None for one kb can read."""
    if (line := text_input.nul_line(content)) is not None:
        return _nul(name, line, "the file is not read")
    if bad := text_input.undecodable(content):
        return Problem(name, text_input.bad_line(content), f"{bad}{undecodable_then}")
    return None


def _nul(name: str, line: int, then: str) -> Problem:
    """A NUL byte's problem: the file's, once, where every line of a UTF-16 file was one."""
    return Problem(name, line, f"{text_input.NUL_BYTE}; {then}")


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
