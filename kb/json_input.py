"""JSON from outside (request bodies, the `where` parameter, files to load): parsed with a
bound on nesting, and refused where a string holds a lone UTF-16 surrogate.

json.loads takes "\\ud800" escapes and returns strings no UTF-8 encoder (the tokenizer,
Chroma, SQLite) can take, so they failed far from the input, as 500s; and it recurses once
per nesting level, so a few thousand brackets raised RecursionError.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb import text_input
from kb.errors import ConfigError

# Past the deepest filter the settings allow (64 levels, two JSON levels each), so a filter
# too deep is refused by the filter's own, clearer limit first.
MAX_DEPTH = 200
_SURROGATE = re.compile("[\ud800-\udfff]")

Trail = tuple["Trail", str | int] | None  # (parent, key): one pair per value, joined on error


class UnusableJSON(ValueError):
    """Parsed JSON the service cannot take: `path` to the value (dotted, "" for the whole
    document) and what is wrong with it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def parse(raw: str | bytes, *, keep_repeated: bool = False, **options: Any) -> Any:
    """json.loads(raw, **options); nesting too deep for it is an UnusableJSON, not a
    RecursionError, and so is a key given twice in one object (json.loads kept the last
    value, silently: `{"ids": ["a"], "ids": ["b"]}` deleted b). ValueError (UnusableJSON
    among them) when `raw` is not usable JSON. With `keep_repeated`, an object with a key
    given twice is kept, for `check` to refuse: one record of a file's array, not the file."""
    hook = _kept_object if keep_repeated else _object
    try:
        return json.loads(raw, object_pairs_hook=hook, **options)
    except RecursionError:
        raise UnusableJSON("", _too_deep()) from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's advice was passed on
            digits = sys.get_int_max_str_digits()
            raise UnusableJSON("", f"holds an integer of more than {digits} digits") from None
        raise


class Repeated(dict[str, Any]):
    """An object with a key given twice, kept by `parse(keep_repeated=True)`; `check`, or
    `repeated`, says what is wrong with it."""

    problem = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = _kept_object(pairs)
    if isinstance(found, Repeated):
        raise UnusableJSON("", found.problem)
    return found


def _kept_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) < len(pairs):
        counts = Counter(key for key, _ in pairs)
        twice = next(key for key, _ in pairs if counts[key] > 1)
        repeated = Repeated(found)
        repeated.problem = f"key '{_printable(twice)}' is given twice in one object"
        return repeated
    return found


def line_problem(exc: json.JSONDecodeError) -> str:
    """The decoder's message for one line of a file, with the column only: its "line 1"
    counts the record's lines, not the file's."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each non-blank line's object of a JSON-lines file (a byte-order mark skipped) with its
    'file:line'; a line `line_object` refuses, or one holding a byte that is not UTF-8, is a
    ConfigError naming it. Bad bytes are decoded as kb load decodes them (text_input), so
    they are found at their line: a strict decoder raised UnicodeDecodeError, a traceback
    naming no line."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            if bad := text_input.undecodable(line):
                raise ConfigError(f"{where}: {bad}")
            try:
                yield where, line_object(line)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None


def line_object(line: str) -> dict[str, Any]:
    """One line of a JSON-lines file as its object (`loads`: checked too), or a ValueError
    saying what is wrong, for the caller to cite with the file's line."""
    try:
        data = loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({line_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def loads(raw: str | bytes, **options: Any) -> Any:
    """`parse` then `check`: JSON the service can take, or a ValueError (UnusableJSON among
    them) saying why not."""
    data = parse(raw, **options)
    check(data)
    return data


def loads_object(raw: str | bytes) -> dict[str, Any]:
    """`loads`, for a value that must be an object (a `where` given as text): anything else
    is an UnusableJSON (`null` was taken for no filter, and listed or exported everything)."""
    data = loads(raw)
    if not isinstance(data, dict):
        raise UnusableJSON("", f"must be a JSON object (got {_json_type(data)})")
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def check(data: Any) -> None:
    """Raise UnusableJSON for nesting deeper than MAX_DEPTH, for the first string (a value
    or a key) holding a lone surrogate, or an object with a key given twice (kept by `parse`).
    Iterative, so deep data cannot make it recurse."""
    stack: list[tuple[Any, int, Trail]] = [(data, 0, None)]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict | list):
            if depth == MAX_DEPTH:
                raise UnusableJSON("", _too_deep())
            if isinstance(value, Repeated):
                raise UnusableJSON(_dotted(path), value.problem)
            if isinstance(value, dict):
                for key in value:
                    _check_text(key, path, key=True)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in reversed(list(items)):  # popped in document order
                stack.append((item, depth + 1, (path, key)))


def _check_text(text: str, path: Trail, key: bool = False) -> None:
    if text.isascii() or (found := _SURROGATE.search(text)) is None:
        return
    code = f"\\u{ord(found.group()):04x}"
    what = f"key '{_printable(text)}' holds" if key else "holds"
    message = f"{what} a lone UTF-16 surrogate ({code}), which is not a character"
    raise UnusableJSON(_dotted(path), message)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _dotted(path: Trail) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(str(key))
    return ".".join(reversed(parts))


def _too_deep() -> str:
    return f"nests arrays and objects deeper than {MAX_DEPTH} levels"
