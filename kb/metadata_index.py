"""Chroma's where-clauses evaluated in memory, over inverted indexes of the rows' metadata.

Chroma answers a filtered query by first listing, through SQLite, every record the filter
matches; with 100k records and a broad filter that costs far more than scoring the matches.
These indexes give the same rows (Chroma's semantics, checked by a differential test in
tests/test_mirror.py) as a boolean mask in well under a millisecond.

Rows are appended by the mirror's writer, under its lock. Readers never lock: each call reads
the rows below the `size` it is given, which a writer has finished, and the per-write cache
it started with (a write replaces the cache; it never changes one a reader may hold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kb.chroma_floats import chroma_float
from kb.schemas import INT64

ValueKey = tuple[str, Any]
RANGE_OPS = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
NEGATIONS = {"$ne", "$nin", "$not_contains"}
EXACT = 2**53  # integers up to this size are exact as float64
KINDS = {"i": ("i",), "f": ("f",), "n": ("i", "f")}  # numeric columns: what each holds
# A decimal bound as the integer threshold it sets integer metadata: x > 2.5 is x > 2 and
# x >= 2.5 is x >= 3 (Chroma truncates the bound, finding 2 >= 2.5; kb compares numbers as
# numbers); an integer bound is its own threshold.
THRESHOLD = {"$gt": math.floor, "$gte": math.ceil, "$lt": math.ceil, "$lte": math.floor}


# value_key's kind of a value of exactly these types (subclasses take value_key's tests)
SCALAR_KINDS: dict[type, str] = {bool: "b", int: "i", float: "f", str: "s"}


def value_key(value: Any) -> ValueKey:
    """A metadata value or list item as Chroma tells them apart: True is not 1, "1" is not 1,
    and 1 is not 1.0 (though they are equal, see `equal_keys`). Stored decimals are as Chroma
    holds them (kb.chroma_floats: the mirror's rows are)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", value)
    return ("s", value)


def argument_key(value: Any) -> ValueKey:
    """A filter's value as Chroma compares it: a decimal after its JSON parse (kb.filters
    sends floats the parse keeps, and beside them values as given that documents written
    before 4c9c52e hold as the parse moved them)."""
    if type(value) is float:
        return ("f", chroma_float(value))
    return value_key(value)


def equal_keys(value: Any) -> list[ValueKey]:
    """The keys of the values Chroma's $eq finds for this one: 1 finds 1 and 1.0. An integer
    finds integers exactly (2**53 + 1 is not 2**53) and decimals as the float it rounds to,
    as Chroma compares them; a decimal (as Chroma parses it) finds the integer it is, if it
    is one."""
    key = argument_key(value)
    if key[0] == "i":
        return [key, ("f", float(value))]
    if key[0] == "f" and key[1].is_integer() and -INT64 <= key[1] < INT64:
        return [key, ("i", int(key[1]))]
    return [key]


class MetadataIndex:
    """For each metadata key, the rows holding each value (scalars) and each list item."""

    def __init__(self) -> None:
        self._values: dict[str, dict[ValueKey, list[int]]] = {}  # key -> value -> rows
        self._elements: dict[str, dict[ValueKey, list[int]]] = {}  # list items -> rows
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}  # per write: row arrays, columns

    def add(self, row: int, metadata: dict[str, Any]) -> None:
        """Index a new row (rows are added in ascending order, each once)."""
        self.add_many(row, [metadata])

    def add_many(self, first: int, metadatas: Iterable[dict[str, Any]]) -> None:
        """Index new rows first, first + 1, ... holding these metadata (rows are added in
        ascending order, each once). The loop a mirror's load runs for every value of every
        row (1.2 million at 100k short documents): a scalar's key is made from its type,
        without `value_key`'s tests."""
        values, elements, kinds = self._values, self._elements, SCALAR_KINDS
        for row, metadata in enumerate(metadatas, first):
            for key, value in metadata.items():
                kind = kinds.get(type(value))
                if kind is None and isinstance(value, list):
                    items = elements.get(key)
                    if items is None:
                        items = elements[key] = {}
                    for item in dict.fromkeys(map(value_key, value)):
                        items.setdefault(item, []).append(row)
                    continue
                found = values.get(key)
                if found is None:
                    found = values[key] = {}
                item = (kind, value) if kind is not None else value_key(value)
                rows = found.get(item)
                if rows is None:
                    found[item] = [row]
                else:
                    rows.append(row)

    def written(self) -> None:
        """A write is done: drop the arrays cached from the lists it grew."""
        self._cache = {}

    def mask(self, where: dict[str, Any], size: int) -> np.ndarray:
        """Boolean mask over rows [0, size): which match the where-clause (deleted rows are
        the caller's to mask out)."""
        return self._mask(where, size, self._cache)

    def _mask(self, where: dict[str, Any], size: int, cache: dict) -> np.ndarray:
        if "$and" in where:
            return np.logical_and.reduce([self._mask(part, size, cache) for part in where["$and"]])
        if "$or" in where:
            return np.logical_or.reduce([self._mask(part, size, cache) for part in where["$or"]])
        ((key, condition),) = where.items()
        if not isinstance(condition, dict):
            condition = {"$eq": condition}
        ((op, arg),) = condition.items()
        if op in RANGE_OPS:
            bound = chroma_float(arg) if type(arg) is float else arg
            return self._range(key, op, bound, size, cache)
        if op in {"$contains", "$not_contains"}:  # list items: 1 is not 1.0, as in Chroma
            found = self._rows(self._elements, key, [arg], size, cache, lambda v: [argument_key(v)])
        else:
            wanted = arg if op in {"$in", "$nin"} else [arg]
            found = self._rows(self._values, key, wanted, size, cache, equal_keys)
        return ~found if op in NEGATIONS else found

    def _rows(
        self,
        values: dict[str, dict[ValueKey, list[int]]],
        key: str,
        wanted: Sequence[Any],
        size: int,
        cache: dict,
        keys: Callable[[Any], list[ValueKey]],
    ) -> np.ndarray:
        mask = np.zeros(size, dtype=bool)
        index = values.get(key, {})
        parts = []
        for item in (item for value in wanted for item in keys(value)):
            if item not in index:  # most often the float twin of an integer: no rows
                continue
            name = (id(values), key, item)
            rows = cache.get(name)
            if rows is None:
                rows = cache[name] = np.asarray(index.get(item, ()), dtype=np.int64)
            parts.append(rows)
        if parts:  # one assignment: a text filter's $in lists tens of thousands of documents
            rows = np.concatenate(parts)
            mask[rows[rows < size]] = True
        return mask

    def _range(self, key: str, op: str, bound: float, size: int, cache: dict) -> np.ndarray:
        """Rows whose number compares so with the bound: decimals as floats (an integer bound
        as the float it rounds to, as Chroma compares them), integers exactly, never through
        a float (which cannot tell 2**53 + 1 from 2**53)."""
        if abs(bound) <= EXACT and (numbers := self._column(key, "n", size, cache)) is not None:
            # the usual case: every number and the bound exact as floats, one comparison
            with np.errstate(invalid="ignore"):  # NaN: no number in that row
                return RANGE_OPS[op](numbers, float(bound))
        floats = self._column(key, "f", size, cache)
        with np.errstate(invalid="ignore"):  # NaN: no decimal in that row
            found = RANGE_OPS[op](floats, float(bound)) if floats is not None else None
        ints = self._column(key, "i", size, cache)
        hits = _int_range(ints, op, bound) if ints is not None else None
        if hits is None:
            return found if found is not None else np.zeros(size, dtype=bool)
        return hits if found is None else hits | found

    def _column(self, key: str, kind: str, size: int, cache: dict) -> Any:
        """The key's numbers of one kind by row, or None if no row holds one: decimals ("f")
        as float64 (NaN where absent), integers ("i") as two int64 columns (`_int_range`),
        both ("n") as float64 if every integer is exact as a float."""
        name = ("numbers", kind, key)
        built = cache.get(name)
        if built is None or built[0] < size:
            entries = list(self._values.get(key, {}).items())
            found = [(value, rows) for (k, value), rows in entries if k in KINDS[kind]]
            if kind == "n" and any(type(v) is int and abs(v) > EXACT for v, _ in found):
                found = []
            built = cache[name] = (size, _column(found, kind, size) if found else None)
        column = built[1]
        if column is None:
            return None
        if kind == "i":
            return column[0][:size], column[1][:size]
        return column[:size]


def _int_range(ints: tuple[np.ndarray, np.ndarray], op: str, bound: float) -> np.ndarray:
    """Rows whose integer compares so with the bound, exactly. Rows without one hold the
    lowest int64 in `low` and the highest in `high`, so that one comparison (as fast as
    the float one) leaves them out, unless the threshold is an end of int64."""
    low, high = ints
    threshold = bound if isinstance(bound, int) else THRESHOLD[op](bound)
    upward = op in {"$gt", "$gte"}
    column = low if upward else high
    if -INT64 < threshold < INT64 - 1:
        return RANGE_OPS[op](column, threshold)
    if -INT64 <= threshold < INT64:
        return RANGE_OPS[op](column, threshold) & (low == high)
    if (threshold < 0) == upward:  # beyond every int64: all integers pass, or none
        return low == high
    return np.zeros(len(low), dtype=bool)


def _column(found: list[tuple[Any, list[int]]], kind: str, size: int) -> Any:
    """One kind's values in the rows holding them: for integers, two int64 columns holding
    the lowest and the highest int64 elsewhere; otherwise float64 with NaN elsewhere."""
    if kind == "i":
        low = np.full(size, -INT64, dtype=np.int64)
        for value, rows in found:
            rows_array = np.asarray(rows, dtype=np.int64)
            low[rows_array[rows_array < size]] = value
        high = low.copy()
        high[low == -INT64] = INT64 - 1
        for value, rows in found:  # rows holding the lowest int64 itself
            if value == -INT64:
                rows_array = np.asarray(rows, dtype=np.int64)
                high[rows_array[rows_array < size]] = value
        return low, high
    values = np.full(size, np.nan)
    for value, rows in found:
        rows_array = np.asarray(rows, dtype=np.int64)
        values[rows_array[rows_array < size]] = value
    return values
