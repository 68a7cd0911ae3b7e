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

from collections.abc import Sequence
from typing import Any

import numpy as np

ValueKey = tuple[str, Any]
RANGE_OPS = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
NEGATIONS = {"$ne", "$nin", "$not_contains"}


def value_key(value: Any) -> ValueKey:
    """Chroma's equality: 1 == 1.0, but True is not 1 and "1" is not 1."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    return ("s", value)


class MetadataIndex:
    """For each metadata key, the rows holding each value (scalars) and each list item."""

    def __init__(self) -> None:
        self._values: dict[str, dict[ValueKey, list[int]]] = {}  # key -> value -> rows
        self._elements: dict[str, dict[ValueKey, list[int]]] = {}  # list items -> rows
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}  # per write: row arrays, columns

    def add(self, row: int, metadata: dict[str, Any]) -> None:
        """Index a new row (rows are added in ascending order, each once)."""
        for key, value in metadata.items():
            if isinstance(value, list):
                items = self._elements.setdefault(key, {})
                for item in dict.fromkeys(value_key(v) for v in value):
                    items.setdefault(item, []).append(row)
            else:
                self._values.setdefault(key, {}).setdefault(value_key(value), []).append(row)

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
            with np.errstate(invalid="ignore"):
                return RANGE_OPS[op](self._numbers(key, size, cache), float(arg))
        values = self._elements if op in {"$contains", "$not_contains"} else self._values
        wanted = arg if op in {"$in", "$nin"} else [arg]
        found = self._rows(values, key, wanted, size, cache)
        return ~found if op in NEGATIONS else found

    def _rows(
        self,
        values: dict[str, dict[ValueKey, list[int]]],
        key: str,
        wanted: Sequence[Any],
        size: int,
        cache: dict,
    ) -> np.ndarray:
        mask = np.zeros(size, dtype=bool)
        index = values.get(key, {})
        for value in wanted:
            item = value_key(value)
            name = (id(values), key, item)
            rows = cache.get(name)
            if rows is None:
                rows = cache[name] = np.asarray(index.get(item, ()), dtype=np.int64)
            mask[rows[rows < size]] = True
        return mask

    def _numbers(self, key: str, size: int, cache: dict) -> np.ndarray:
        """The key's numeric values by row; NaN where it is missing or not a number."""
        name = ("numbers", key)
        column = cache.get(name)
        if column is None or len(column) < size:
            column = np.full(size, np.nan)
            for (kind, value), rows in list(self._values.get(key, {}).items()):
                if kind == "n":
                    rows_array = np.asarray(rows, dtype=np.int64)
                    column[rows_array[rows_array < size]] = value
            cache[name] = column
        return column[:size]
