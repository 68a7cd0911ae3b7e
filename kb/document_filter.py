"""Text filters (`where_document`) decided per document, not per chunk.

Chroma applies a text filter to each record, and a long document is several records: its
chunks. A search returns whole documents, so a document passes `$contains` / `$regex` when
any of its chunks matches and `$not_contains` / `$not_regex` when none does, and `$and` /
`$or` combine those document verdicts.

On the mirror (the in-memory copy searches use), the verdicts are masks: over the document
numbers, then over the rows of the documents passing, which the mirror's search paths apply
as they apply a metadata filter's mask. A `$contains` is tested on the mirror's texts while
few of them are kept compressed; a `$regex` (Chroma's dialect, not Python's) and a
`$contains` over compressed texts are one ids-only `get` from Chroma each. Without the
mirror, each condition is such a `get`, and the result is a where-clause listing the
passing documents' ids, which FTS5's allowed ids and Chroma's query apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import numpy as np

from kb import collection
from kb.errors import ValidationFailed, field_error
from kb.filters import CompiledFilter, TextRows, and_where
from kb.mirror import Mirror, filter_key
from kb.records import DOC, doc_id_of

POSITIVE = {"$not_contains": "$contains", "$not_regex": "$regex"}  # negation -> its opposite
NEVER_MATCHES = (
    " (Chroma's answer to a pattern that can never match, such as the empty classes [a&&b] "
    "and [^\\s\\S])"
)


class Verdicts(Protocol):
    """Which documents pass, combined as sets are: `Documents`, or a mask over the mirror's
    document numbers."""

    def __and__(self, other: Self, /) -> Self: ...

    def __or__(self, other: Self, /) -> Self: ...

    def __invert__(self) -> Self: ...


V = TypeVar("V", bound=Verdicts)
Ids = Callable[[CompiledFilter], list[str]]


@dataclass(frozen=True)
class Documents:
    """A set of document ids, or (`negated`) every document except those."""

    ids: frozenset[str]
    negated: bool = False

    def __invert__(self) -> Documents:
        return Documents(self.ids, not self.negated)

    def __and__(self, other: Documents) -> Documents:
        if not self.negated and not other.negated:
            return Documents(self.ids & other.ids)
        if self.negated and other.negated:
            return Documents(self.ids | other.ids, True)
        kept, dropped = (other, self) if self.negated else (self, other)
        return Documents(kept.ids - dropped.ids)

    def __or__(self, other: Documents) -> Documents:
        return ~(~self & ~other)


def by_document(
    flt: CompiledFilter, ids: Ids, mirror: Mirror | None = None
) -> CompiledFilter | None:
    """`flt` with its text filter replaced by the documents that pass it: their rows on the
    mirror, if given (it must be current), else a where-clause on the document id; None when
    no document can pass. `ids` lists the record ids a filter matches (RecordCollection.ids)."""
    if flt.where_document is None:
        return flt
    if mirror is not None:
        return _on_mirror(flt.where, flt.where_document, ids, mirror)
    passing = _evaluate(
        flt.where_document, lambda node, path: Documents(_documents(_listed(node, ids, path)))
    )
    if passing.negated and len(passing.ids) > collection.ID_LIST_CAP:
        # a $nin cannot be asked in parts (RecordCollection's split): list who passes instead
        passing = Documents(_documents(ids(CompiledFilter())) - passing.ids)
    if not passing.ids:
        return None if not passing.negated else CompiledFilter(flt.where)
    op = "$nin" if passing.negated else "$in"
    return CompiledFilter(and_where(flt.where, {DOC: {op: sorted(passing.ids)}}))


def _on_mirror(
    where: dict[str, Any] | None, where_document: dict[str, Any], ids: Ids, mirror: Mirror
) -> CompiledFilter | None:
    """The filter with its text filter decided on the mirror, as of its rows now (a row added
    meanwhile passes no text filter), and kept there until the next write; None when no
    document can pass."""

    def decide() -> np.ndarray:
        size, documents = mirror.extent()

        def matching(node: dict[str, Any], path: str) -> np.ndarray:
            ((op, arg),) = node.items()
            if op == "$contains" and mirror.scans_texts:
                rows = mirror.rows_containing(arg, size)
            else:
                rows = mirror.rows_of(_listed(node, ids, path), size)
            return mirror.documents_with(rows, documents)

        return mirror.rows_of_documents(_evaluate(where_document, matching), size)

    rows = mirror.kept(f"text {filter_key(where_document)}", decide)
    if not rows.any():
        return None
    return CompiledFilter(where, text_rows=TextRows(mirror, rows))


def _evaluate(
    node: dict[str, Any],
    matching: Callable[[dict[str, Any], str], V],
    path: str = "where_document",
) -> V:
    """The documents passing a text filter, from `matching`: those with a chunk matching
    one condition (at `path` in the request)."""
    ((op, arg),) = node.items()
    path = f"{path}.{op}"
    if op in ("$and", "$or"):
        parts = [_evaluate(part, matching, f"{path}.{i}") for i, part in enumerate(arg)]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part if op == "$and" else combined | part
        return combined
    if op in POSITIVE:  # no chunk matches: every document but those with a chunk that does
        return ~matching({POSITIVE[op]: arg}, path)
    return matching(node, path)


def _listed(node: dict[str, Any], ids: Ids, path: str) -> list[str]:
    """The records matching one text condition (at `path` in the request), from Chroma."""
    try:
        return ids(CompiledFilter(None, node))
    except ValidationFailed as exc:  # Chroma refused the condition: name it
        if exc.details:
            raise
        message = exc.message
        if "Byte pattern" in message:
            message += NEVER_MATCHES
        raise ValidationFailed(
            f"{path}: {message}", details=[field_error(path, message, "filter_error")]
        ) from exc


def _documents(record_ids: list[str]) -> frozenset[str]:
    """The documents of these records: a chunk's id is its document's id, plus '#chunk<N>'
    after the first."""
    return frozenset(doc_id_of(rid) for rid in record_ids)
