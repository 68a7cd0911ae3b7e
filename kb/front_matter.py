"""Markdown front matter: YAML between "---" lines at the start of a file, typed as JSON
would spell it (YAML 1.1's implicit types would change what was written: 02134, 12:30, NO)."""

from __future__ import annotations

import datetime as dt
import re
from functools import cache
from typing import Any

from kb.schemas import JSON_NUMBER, number_or_text

# "---" lines (trailing blanks allowed, LF or CRLF) around YAML, at the start of the file
_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)


class FrontMatterError(ValueError):
    """Front matter that cannot be read; `line` is its line in the file."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


def split(content: str) -> tuple[dict[str, Any] | None, str]:
    """(the front matter's mapping, or None when there is none; the text after it)."""
    found = _FRONT.match(content)
    if not found:
        return None, content
    return _parse(found.group(1)), content[found.end() :].lstrip("\r\n")


def _parse(text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.load(text, Loader=_yaml_loader()) or {}  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise _yaml_problem(exc) from exc
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise FrontMatterError("must be a mapping of key: value")
    return {str(key): _plain(value) for key, value in data.items()}


def _yaml_problem(exc: Any) -> FrontMatterError:
    """YAML's error on one line, at its line in the file (YAML's own count starts after the
    opening "---"): a problem is one line of kb load's output."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context or 'cannot be read'}"
    return FrontMatterError(message, mark.line + 2 if mark is not None else 1)


# YAML 1.1's implicit types that change what was written: 02134 (octal 1116), 12:30
# (sexagesimal 750), NO/yes/on (booleans); replaced by JSON's spellings, which CSV cells and
# query strings follow too (kb.schemas.number_or_text).
_DROPPED_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NUMBER_TAG = "tag:kb,2026:number"


@cache
def _yaml_loader() -> type:
    """A SafeLoader typing scalars as JSON would (true/false, numbers spelt as JSON spells
    them) plus ISO dates; everything else stays the text written. Keys are always
    that text ("null:" is the key "null", not None)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    key.tag = "tag:yaml.org,2002:str"
            return super().construct_mapping(node, deep)

    Loader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in _DROPPED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
    number = re.compile(f"^(?:{JSON_NUMBER.pattern})$")
    Loader.add_implicit_resolver(_NUMBER_TAG, number, list("-0123456789"))
    # as a CSV cell: a number beyond what metadata holds (1e999, 20 digits) stays its text
    Loader.add_constructor(_NUMBER_TAG, lambda loader, node: number_or_text(node.value))
    return Loader


def _plain(value: Any) -> Any:
    """YAML dates become ISO strings, as a JSON record would carry them."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
