"""Summaries of the stored metadata: per key, how many documents have it and its common values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from kb.filters import parse_iso
from kb.schemas import FieldStats

TOP_VALUES = 25


def metadata_stats(metadatas: Iterable[dict[str, Any] | None]) -> dict[str, FieldStats]:
    """Per metadata key: document count, distinct values, the most common ones, and a range
    for keys whose values are all numbers or all ISO dates."""
    present: Counter[str] = Counter()
    items: dict[str, list[Any]] = {}  # per key, every value (list items one by one)
    for metadata in metadatas:
        for key, value in (metadata or {}).items():
            present[key] += 1
            found = items.get(key)
            if found is None:
                found = items[key] = []
            if isinstance(value, list):
                found.extend(value)
            else:
                found.append(value)
    stats = {}
    for key in sorted(present):
        values = items[key]
        labels = Counter(map(_label, values))
        # one of each value, told apart by type (True == 1 == 1.0 in a set)
        unique = [v for _, v in dict.fromkeys(zip(map(type, values), values, strict=True))]
        stats[key] = FieldStats(
            documents=present[key],
            distinct=len(labels),
            values=dict(labels.most_common(TOP_VALUES)),
            **_range(unique),
        )
    return stats


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _range(items: list[Any]) -> dict[str, Any]:
    if items and all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
        return {"min": min(items), "max": max(items)}
    if items and all(isinstance(v, str) and parse_iso(v) is not None for v in items):
        ordered = sorted(items, key=lambda v: parse_iso(v) or 0.0)
        return {"min": ordered[0], "max": ordered[-1]}
    return {}
