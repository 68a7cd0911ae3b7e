"""Markdown front matter: YAML between "---" lines at the start of a file, typed as JSON
would spell it (YAML 1.1's implicit types would change what was written: 02134, 12:30, NO)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from kb.schemas import JSON_NUMBER, MAX_METADATA_VALUES, METADATA_VALUES, number_or_text

# "---" lines (trailing blanks allowed; LF, CRLF or an old Mac's lone CR) around YAML, at the
# start of the file. A lookbehind, not "^": MULTILINE's "^" follows "\n" only.
_FRONT = re.compile(
    r"\A---[ \t]*(?:\r\n|\r|\n)(.*?)(?<=[\r\n])---[ \t]*(?:\r\n|\r|\n|\Z)", re.DOTALL
)
# What aliases (*name) may expand the front matter to: metadata holds at most
# MAX_METADATA_VALUES values, and a 1 KB "billion laughs" expands to 387 million.
MAX_NODES = 4 * MAX_METADATA_VALUES
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


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
    """The mapping, or a FrontMatterError: YAML's own errors, and the error of a value it
    cannot build (`!!int x`, `!!bool maybe`, an empty `!!int`, lists nested thousands deep),
    stopped a whole folder's load with a traceback."""
    import yaml

    loader = _yaml_loader()(text)  # a SafeLoader subclass
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_nodes(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_problem(exc) from exc
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"invalid YAML: {exc}") from exc
    except RecursionError:
        raise FrontMatterError("lists or mappings nested too deep to read") from None
    except FrontMatterError:
        raise
    except Exception as exc:  # what the constructors below do not name: the file's problem
        raise FrontMatterError(f"cannot be read ({type(exc).__name__}: {exc})") from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise FrontMatterError("must be a mapping of key: value")
    return {str(key): value for key, value in data.items()}


def _yaml_problem(exc: Any) -> FrontMatterError:
    """YAML's error on one line, at its line in the file (YAML's own count starts after the
    opening "---"): a problem is one line of kb load's output."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context or 'cannot be read'}"
    return FrontMatterError(message, _line(mark))


def _line(mark: Any) -> int:
    """A YAML mark's line in the file: YAML counts from 0 after the opening "---"."""
    return mark.line + 2 if mark is not None else 1


def _check_nodes(root: Any) -> None:
    """Refuse, before any value is built, a key without a value and front matter that
    aliases expand past MAX_NODES: PyYAML shares an aliased list, but everything after it
    (validation, storage) walks the expanded tree, and an alias inside the list it names
    (`a: &a [*a]`) never ends."""
    import yaml

    if not isinstance(root, yaml.MappingNode):
        return  # refused once built: "must be a mapping"
    budget = MAX_NODES
    for key, value in root.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else "a key"
        if value.tag == _NULL_TAG and key.tag != _MERGE_TAG:
            raise FrontMatterError(
                f"'{name}' has no value: null is not a metadata value ({METADATA_VALUES}); "
                "leave the key out or write ''",
                _line(key.start_mark),
            )
        budget = _spend(key, _spend(value, budget))
        if budget < 0:
            raise FrontMatterError(
                f"more than {MAX_NODES:,} values by '{name}', aliases (*name) expanded (a "
                f"document holds at most {MAX_METADATA_VALUES:,})",
                _line(key.start_mark),
            )


def _spend(node: Any, budget: int) -> int:
    """`budget` less the nodes under `node` with aliases expanded; negative (and stopped
    there) once they pass it, so a bomb costs at most MAX_NODES steps."""
    import yaml

    stack = [node]
    while stack and budget >= 0:
        node = stack.pop()
        budget -= 1
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return budget


# YAML 1.1's implicit types that change what was written: 02134 (octal 1116), 12:30
# (sexagesimal 750), NO/yes/on (booleans); replaced by JSON's spellings, which CSV cells and
# query strings follow too (kb.schemas.number_or_text).
_DROPPED_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NUMBER_TAG = "tag:kb,2026:number"


@cache
def _yaml_loader() -> type:
    """A SafeLoader typing scalars as JSON would (true/false, numbers spelt as JSON spells
    them); everything else stays the text written, dates included (2024-03-02T10:00:00Z
    was stored as 2024-03-02T10:00:00+00:00, and the same value from JSON as written). Keys
    are always that text ("null:" is the key "null", not None), and one given twice is
    refused (YAML kept the last, silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if not isinstance(node, yaml.MappingNode):  # `!!map x`: YAML's own error
                return super().construct_mapping(node, deep)
            given: set[str] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                    key.tag = "tag:yaml.org,2002:str"
                    if key.value in given:
                        message = f"key '{key.value}' is given twice"
                        raise FrontMatterError(message, _line(key.start_mark))
                    given.add(key.value)
            return super().construct_mapping(node, deep)

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except FrontMatterError:
                raise
            except (ValueError, TypeError, OverflowError, LookupError) as exc:
                # `!!int x`, `!!float x`; `!!bool maybe` and an empty `!!int` (KeyError,
                # IndexError) ended the load with a traceback
                written = node.value if isinstance(node, yaml.ScalarNode) else node.id
                tag = node.tag.replace("tag:yaml.org,2002:", "!!")
                why = "" if isinstance(exc, LookupError) else f" ({exc})"  # KeyError: 'maybe'
                message = f"'{written}' cannot be read as {tag}{why}"
                raise FrontMatterError(message, _line(node.start_mark)) from None

    Loader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in _DROPPED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
    number = re.compile(f"^(?:{JSON_NUMBER.pattern})$")
    Loader.add_implicit_resolver(_NUMBER_TAG, number, list("-0123456789"))
    # as a CSV cell: a number beyond what metadata holds (1e999, 20 digits) stays its text
    Loader.add_constructor(_NUMBER_TAG, lambda loader, node: number_or_text(node.value))
    # a date or time as written, as a JSON string carries it; kb.filters reads the ISO
    # ones for range filters either way, and 2024-02-30 stays text, as from JSON
    Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_scalar)
    return Loader
