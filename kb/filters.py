"""The filter language: validate user filters and translate them to Chroma's where clauses.

Chroma compares only numbers with $gt/$gte/$lt/$lte, so every metadata value that is an ISO
date or datetime is stored with a numeric twin (epoch seconds) under a reserved key; a range
bound given as an ISO string is translated to a comparison on that twin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import eq, ge, gt, le, lt, ne
from typing import TYPE_CHECKING, Any

from kb.chroma_floats import chroma_float, held, stable_float
from kb.config import Settings
from kb.errors import ValidationFailed, field_error
from kb.regex_check import regex_problem
from kb.schemas import RESERVED_PREFIX, check_metadata_key, list_kinds_problem, number_problem

if TYPE_CHECKING:
    import numpy as np

    from kb.mirror import Mirror

TWIN_PREFIX = f"{RESERVED_PREFIX}ts_"
COMPARISON = {"$eq", "$ne"}
RANGE = {"$gt", "$gte", "$lt", "$lte"}
MEMBERSHIP = {"$in", "$nin"}
CONTAINS = {"$contains", "$not_contains"}
# SQLite refuses a LIKE pattern of more bytes (SQLITE_MAX_LIKE_PATTERN_LENGTH): Chroma tests
# $contains as LIKE '%text%', with %, _ and \ escaped, so a long one failed the store (a 503)
LIKE_PATTERN_BYTES = 50_000


def like_bytes(text: str) -> int:
    """The bytes of the LIKE pattern Chroma makes of a $contains argument."""
    escaped = text.count("%") + text.count("_") + text.count("\\")
    return len(text.encode("utf-8")) + escaped + 2


LOGICAL = {"$and", "$or"}
DOCUMENT_OPS = {"$contains", "$not_contains", "$regex", "$not_regex"}
# Chroma binds each $in/$nin value as one SQLite variable, and a statement holds at most
# 32,766 of them ("too many SQL variables" beyond, a 503); KB_MAX_FILTER_VALUES stays below.


def _setting(name: str) -> int:
    return int(Settings.model_fields[name].default)


@dataclass(frozen=True)
class FilterLimits:
    """How deep a filter may nest, how many conditions it may hold and how many values its
    lists may hold in all (KB_MAX_FILTER_*)."""

    depth: int = _setting("max_filter_depth")
    conditions: int = _setting("max_filter_conditions")
    values: int = _setting("max_filter_values")

    @classmethod
    def of(cls, settings: Settings) -> FilterLimits:
        return cls(
            settings.max_filter_depth, settings.max_filter_conditions, settings.max_filter_values
        )


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(
    # any number of fractional digits, read to the microsecond: Go, Java and .NET write 7 to 9,
    # and at most 6 left their dates without a twin, which every range then passed over
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?(Z|[+-]\d{2}:?\d{2})?"
)


@dataclass(frozen=True)
class TextRows:
    """A text filter decided on one in-memory copy of the store (kb.document_filter): which
    of its rows belong to a document passing the filter, below the rows it held then."""

    mirror: Mirror
    rows: np.ndarray


@dataclass(frozen=True)
class CompiledFilter:
    """Chroma-ready clauses; None where there is no condition. `text_rows` is a text filter
    already decided on the mirror (`where_document` is then None): only the mirror's search
    paths read it, and a filter holding it is answered on that mirror."""

    where: dict[str, Any] | None = None
    where_document: dict[str, Any] | None = None
    text_rows: TextRows | None = None


def parse_iso(value: str) -> float | None:
    """Epoch seconds for an ISO date or datetime string (naive = UTC); None if not one."""
    try:
        if _DATE_RE.fullmatch(value):
            return _epoch(datetime.combine(date.fromisoformat(value), datetime.min.time()))
        if _DATETIME_RE.fullmatch(value):
            return _epoch(datetime.fromisoformat(value))
    except ValueError:
        return None
    return None


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def date_twins(metadata: dict[str, Any]) -> dict[str, float]:
    """The numeric twins of a metadata dict's date-valued entries."""
    twins: dict[str, float] = {}
    for key, value in metadata.items():
        if isinstance(value, str) and (stamp := parse_iso(value)) is not None:
            twins[f"{TWIN_PREFIX}{key}"] = stamp
    return twins


def and_where(*clauses: dict[str, Any] | None) -> dict[str, Any] | None:
    """Combine clauses with $and; Chroma wants at least two operands, so collapse."""
    present = [clause for clause in clauses if clause]
    if not present:
        return None
    return present[0] if len(present) == 1 else {"$and": present}


_HOLDS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": eq,
    "$ne": ne,
    "$gt": gt,
    "$gte": ge,
    "$lt": lt,
    "$lte": le,
}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def exact_numbers(key: str, op: str, arg: Any) -> dict[str, Any]:
    """`{key: {op: arg}}` as Chroma answers it right for numbers. Chroma compares a stored
    integer with a fractional bound truncated toward zero ($gte 2.5 and $eq 2.5 match 2,
    $lt 2.5 misses it), and with a bound beyond 64 bits clamped to the 64-bit end ($lt 1e19
    misses 2**63 - 1); a stored float with an integer bound as the float nearest to it
    ($eq 2**53 + 1 matches 2.0**53, $lt 2**53 + 1 misses it). So a delete by such a filter
    removed documents it did not name. Only the number(s) beside such a bound can be
    misjudged: they are named, kept out with $nin or let in with $in (Chroma compares a
    named whole float with integers exactly, so an integer equal to it, which belongs where
    it does, goes with it)."""
    clause = {key: {op: arg}}
    values = arg if op in MEMBERSHIP else [arg]
    near = sorted({n for v in values if not isinstance(v, bool) for n in _misjudged(v)})
    if not near:
        return clause
    if op in MEMBERSHIP:
        listed = set(values)
        holds = [(n in listed) == (op == "$in") for n in near]
    else:
        holds = [_HOLDS[op](n, arg) for n in near]
    outs = [n for n, belongs in zip(near, holds, strict=True) if not belongs]
    ins = [n for n, belongs in zip(near, holds, strict=True) if belongs]
    # one clause each way, however many values a list has (two a value as $ne / $eq)
    exact = and_where(clause, {key: {"$nin": outs}} if outs else None) or clause
    return {"$or": [exact, {key: {"$in": ins}}]} if ins else exact


SET_OF = {"$eq": "$in", "$ne": "$nin"}


def _written_before(value: Any) -> bool:
    """Whether kb before 4c9c52e stored this decimal as a float it no longer writes: Chroma's
    reading of it, which Chroma reads as another float (a third of the decimals it moves
    below 1e-6 or beyond 1e22). The value as given, sent beside the one kb writes now, finds
    those documents, as it did (Chroma reads it as what it stored then; so do the copies,
    `metadata_index.argument_key`): filtered by the new float only, they went unfound
    (review helper 76)."""
    if type(value) is not float:
        return False
    once = chroma_float(value)
    return chroma_float(once) != once


def _as_sent_before(value: float) -> list[float]:
    """What finds a decimal an earlier kb stored: the value as given, which Chroma reads as
    an embedded store held it (its first reading), and that first reading, which Chroma
    reads as a server held it (it parses a value twice on its way in; review helper 78)."""
    return [value, chroma_float(value)]


def _several_kinds(value: Any) -> bool:
    """A list of scalars of more than one type as Chroma tells them apart
    (`list_kinds_problem`); one holding anything else is refused as a list, naming the
    problem (it was a 500, unhashable)."""
    return (
        isinstance(value, list)
        and all(isinstance(item, str | int | float | bool) for item in value)
        and list_kinds_problem(value) is not None
    )


def _by_kind(values: list[Any]) -> list[list[Any]]:
    """A list of scalars by type as Chroma tells them apart (bool, int, float, str), in the
    order each type first comes."""
    groups: dict[type, list[Any]] = {}
    for value in values:
        groups.setdefault(type(value), []).append(value)
    return list(groups.values())


def _misjudged(bound: Any) -> tuple[int | float, ...]:
    """The stored numbers Chroma may compare wrongly with a numeric bound: the integers
    beside a fractional or beyond-64-bit float, the float an integer beyond 2**53 rounds to.
    Not the two floats nearest 2**63 in size (2.0**63 and 2.0**63 - 1024, what integers
    within 1,536 of either end of 64 bits round to): named, Chroma matches them with
    2**63 - 1 and with each other, so naming them would misjudge more."""
    if isinstance(bound, int):
        rounded = float(bound)
        return (rounded,) if rounded != bound and abs(rounded) < 2.0**63 - 1024 else ()
    if not isinstance(bound, float):
        return ()
    if bound > INT64_MAX:
        return (INT64_MAX,)
    if bound < INT64_MIN:
        return (INT64_MIN,)
    if bound.is_integer():
        return ()
    return (math.floor(bound), math.ceil(bound))


def compile_filter(
    filters: dict[str, Any] | None = None,
    where: dict[str, Any] | None = None,
    where_document: dict[str, Any] | None = None,
    limits: FilterLimits = FilterLimits(),
    filters_field: str = "filters",
) -> CompiledFilter:
    """Validate and translate the three user filter forms; raise ValidationFailed on errors.
    The condition and value limits hold for the three together (a request's whole filter).
    Errors in `filters` name `filters_field.key`, or the key alone when `filters_field` is
    empty (query parameters: `?difficulty=...` is the field `difficulty`)."""
    errors: list[dict[str, Any]] = []
    clauses: list[dict[str, Any] | None] = []
    translator = _Translator(errors, limits)
    if filters is not None:
        clauses.append(translator.simple(filters, filters_field))
    if where is not None:
        clauses.append(translator.where(where, "where", 0))
    document = None
    if where_document is not None:
        document = translator.document(where_document, "where_document", 0)
    if errors:
        first = errors[0]
        raise ValidationFailed(f"{first['field']}: {first['message']}", details=errors)
    return CompiledFilter(where=and_where(*clauses), where_document=document)


class _Translator:
    """One pass over one filter tree; collects errors with the path to each."""

    def __init__(self, errors: list[dict[str, Any]], limits: FilterLimits) -> None:
        self.errors = errors
        self.limits = limits
        self.conditions = 0
        self.values = 0

    def fail(self, path: str, message: str) -> None:
        self.errors.append(field_error(path, message, "filter_error"))

    def simple(self, filters: Any, root: str) -> dict[str, Any] | None:
        """key -> value (equality) or list (any of). An error names the path the caller
        wrote (`filters.a`), not the operator kb puts there (`filters.a.$in`)."""
        if not isinstance(filters, dict):
            self.fail(root, "must be an object of key -> value or list of values")
            return None
        clauses: list[dict[str, Any] | None] = []
        for key, value in filters.items():
            path = f"{root}.{key}" if root else key
            if not self.key_ok(key, path):
                continue
            if not self.counted(path):
                continue
            if _several_kinds(value):
                # any of values of several types (a CSV column typed cell by cell, a query
                # string's two spellings): one $in a type, as $in takes one. A value spelt
                # both ways counts once against KB_MAX_FILTER_VALUES (the listing's query
                # parameters send each number as a number and as text: 501 were refused)
                unique = list({(type(item), item): item for item in value}.values())
                groups = _by_kind(unique)  # each value once: duplicates were forgiven, and sent
                self.values -= len(unique) - len({str(item).lower() for item in unique})
                parts = [self.operator(key, "$in", group, path) for group in groups]
                kept = [part for part in parts if part]
                clauses.append({"$or": kept} if len(kept) > 1 else kept[0] if kept else None)
            else:
                op = "$in" if isinstance(value, list) else "$eq"
                clauses.append(self.operator(key, op, value, path))
        return and_where(*clauses)

    def where(self, node: Any, path: str, depth: int) -> dict[str, Any] | None:
        if depth > self.limits.depth:
            self.fail(path, f"filters may nest at most {self.limits.depth} levels")
            return None
        if not isinstance(node, dict) or not node:
            self.fail(path, "must be a non-empty object")
            return None
        clauses = []
        for key, value in node.items():
            sub = f"{path}.{key}"
            if key in LOGICAL:
                clauses.append(self.logical(key, value, sub, depth))
            elif key.startswith("$"):
                self.fail(sub, f"unknown operator '{key}' (logical operators: $and, $or)")
            elif self.key_ok(key, sub):
                clauses.append(self.field(key, value, sub))
        return and_where(*clauses)

    def logical(self, op: str, value: Any, path: str, depth: int) -> dict[str, Any] | None:
        if not isinstance(value, list) or not value:
            self.fail(path, f"{op} takes a non-empty list of conditions")
            return None
        parts = [self.where(item, f"{path}.{i}", depth + 1) for i, item in enumerate(value)]
        kept = [part for part in parts if part]
        if len(kept) <= 1:
            return kept[0] if kept else None
        return {op: kept}

    def key_ok(self, key: Any, path: str) -> bool:
        try:
            check_metadata_key(key)
        except ValueError as exc:
            self.fail(path, str(exc))
            return False
        return True

    def counted(self, path: str) -> bool:
        """Count one condition; False (reported once) past the limit."""
        self.conditions += 1
        if self.conditions > self.limits.conditions:
            if self.conditions == self.limits.conditions + 1:
                self.fail(path, f"at most {self.limits.conditions} conditions per filter")
            return False
        return True

    def field(self, key: str, value: Any, path: str) -> dict[str, Any] | None:
        if not self.counted(path):
            return None
        if not isinstance(value, dict):
            if isinstance(value, list):
                self.fail(path, 'a list needs an operator: use {"$in": [...]}')
                return None
            value = {"$eq": value}
        if not value:
            self.fail(path, "needs an operator such as $eq, $in or $gte")
            return None
        clauses = [self.operator(key, op, arg, f"{path}.{op}") for op, arg in value.items()]
        return and_where(*clauses)

    def operator(self, key: str, op: str, arg: Any, path: str) -> dict[str, Any] | None:
        # decimals as kb writes them (kb.chroma_floats): as given, 8.619691065212169e-10
        # missed what GET shows as 8.61969106521217e-10, and 945250317053727.9 was judged a
        # fraction though Chroma holds it (and compares it) as 945250317053728.0
        given, arg = arg, held(arg)
        if op in CONTAINS:  # list items: Chroma matches 2 and 2.0 as different values
            if self.scalar_ok(arg, path):
                return {key: {op: arg}}
        elif op in COMPARISON:
            if self.scalar_ok(arg, path):
                if _written_before(given):  # $eq as $in, $ne as $nin, with the value as given
                    return exact_numbers(key, SET_OF[op], [arg, *_as_sent_before(given)])
                return exact_numbers(key, op, arg)
        elif op in MEMBERSHIP:
            if self.list_ok(arg, path):
                if isinstance(given, list) and any(_written_before(item) for item in given):
                    old = [_as_sent_before(item) for item in given if _written_before(item)]
                    arg = list(dict.fromkeys([*arg, *(v for pair in old for v in pair)]))
                return exact_numbers(key, op, arg)
        elif op in RANGE:
            return self.range(key, op, arg, path)
        else:
            known = ", ".join(sorted(COMPARISON | RANGE | MEMBERSHIP | CONTAINS))
            self.fail(path, f"unknown operator '{op}' (known: {known})")
        return None

    def range(self, key: str, op: str, arg: Any, path: str) -> dict[str, Any] | None:
        if isinstance(arg, int | float) and not isinstance(arg, bool):
            return exact_numbers(key, op, arg) if self.scalar_ok(arg, path) else None
        if isinstance(arg, str):
            stamp = parse_iso(arg)
            if stamp is None:
                self.fail(path, f"'{arg}' is not a number or an ISO date (YYYY-MM-DD[THH:MM:SS])")
                return None
            if _DATE_RE.fullmatch(arg) and op in {"$gt", "$lte"}:
                # A bare date means the whole day: "after 2024-01-31" starts on Feb 1.
                stamp += timedelta(days=1).total_seconds()
                op = "$gte" if op == "$gt" else "$lt"
            return {f"{TWIN_PREFIX}{key}": {op: stable_float(stamp)}}
        self.fail(path, f"{op} needs a number or an ISO date string")
        return None

    def scalar_ok(self, arg: Any, path: str) -> bool:
        if not isinstance(arg, str | int | float | bool):
            self.fail(path, "needs a string, number or boolean")
        elif (problem := number_problem(arg)) is not None:
            # Chroma refuses such a value as an invalid where clause (a 503, were it sent)
            self.fail(path, problem)
        else:
            return True
        return False

    def list_ok(self, arg: Any, path: str) -> bool:
        if not isinstance(arg, list) or not arg:
            self.fail(path, "needs a non-empty list of values")
            return False
        self.values += len(arg)
        if self.values > self.limits.values:
            self.fail(path, f"at most {self.limits.values} values in a filter's lists in all")
            return False
        if not all(self.scalar_ok(item, path) for item in arg):
            return False
        if (problem := list_kinds_problem(arg)) is not None:
            self.fail(path, problem)
            return False
        return True

    def document(self, node: Any, path: str, depth: int) -> dict[str, Any] | None:
        if depth > self.limits.depth:
            self.fail(path, f"filters may nest at most {self.limits.depth} levels")
            return None
        if not isinstance(node, dict) or len(node) != 1:
            self.fail(path, "must be an object with exactly one operator")
            return None
        ((op, arg),) = node.items()
        sub = f"{path}.{op}"
        if op in LOGICAL:
            if not isinstance(arg, list) or not arg:
                self.fail(sub, f"{op} takes a non-empty list of conditions")
                return None
            parts = [self.document(item, f"{sub}.{i}", depth + 1) for i, item in enumerate(arg)]
            kept = [part for part in parts if part]
            return kept[0] if len(kept) == 1 else ({op: kept} if kept else None)
        if op not in DOCUMENT_OPS:
            known = ", ".join(sorted(DOCUMENT_OPS | LOGICAL))
            self.fail(sub, f"unknown operator '{op}' (known: {known})")
            return None
        if not self.counted(sub):  # each one a scan of every text (kb.document_filter)
            return None
        if not isinstance(arg, str) or not arg:
            self.fail(sub, f"{op} needs a non-empty string")
            return None
        if op in CONTAINS and "\x00" in arg:  # Chroma's substring test stops at a NUL
            self.fail(sub, f"{op} cannot hold the NUL character (U+0000); $regex can")
            return None
        if op in CONTAINS and like_bytes(arg) > LIKE_PATTERN_BYTES:
            self.fail(
                sub,
                f"{op} takes at most {LIKE_PATTERN_BYTES - 2:,} bytes of UTF-8, each %, _ or "
                f"\\ counting twice (SQLite's limit on the pattern Chroma builds); this one "
                f"takes {like_bytes(arg) - 2:,}",
            )
            return None
        if "regex" in op and (problem := regex_problem(arg)) is not None:
            self.fail(sub, f"invalid regular expression for Chroma's engine: {problem}")
            return None
        return {op: arg}
