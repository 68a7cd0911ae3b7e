"""Text filters (`where_document`) decided per document, not per chunk.

Chroma applies a text filter to each record, and a long document is several records: its
chunks. A search returns whole documents, so a document passes `$contains` / `$regex` when
any of its chunks matches and `$not_contains` / `$not_regex` when none does, and `$and` /
`$or` combine those document verdicts. Each condition is one ids-only `get` from Chroma; the
result is a where-clause on the document id, which every search path (the mirror's masks,
FTS5's allowed ids, Chroma's query) already applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kb import collection
from kb.errors import ValidationFailed, field_error
from kb.filters import CompiledFilter, and_where
from kb.records import DOC, doc_id_of

POSITIVE = {"$not_contains": "$contains", "$not_regex": "$regex"}  # negation -> its opposite
NEVER_MATCHES = (
    " (Chroma's answer to a pattern that can never match, such as the empty classes [a&&b] "
    "and [^\\s\\S])"
)


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
    flt: CompiledFilter, ids: Callable[[CompiledFilter], list[str]]
) -> CompiledFilter | None:
    """`flt` with its text filter replaced by the documents that pass it (a where-clause on
    the document id); None when no document can pass. `ids` lists the record ids a filter
    matches (RecordCollection.ids)."""
    if flt.where_document is None:
        return flt
    passing = _evaluate(flt.where_document, ids)
    if passing.negated and len(passing.ids) > collection.ID_LIST_CAP:
        # a $nin cannot be asked in parts (RecordCollection's split): list who passes instead
        passing = Documents(_documents(ids(CompiledFilter())) - passing.ids)
    if not passing.ids:
        return None if not passing.negated else CompiledFilter(flt.where)
    op = "$nin" if passing.negated else "$in"
    return CompiledFilter(and_where(flt.where, {DOC: {op: sorted(passing.ids)}}))


def _evaluate(
    node: dict[str, Any], ids: Callable[[CompiledFilter], list[str]], path: str = "where_document"
) -> Documents:
    ((op, arg),) = node.items()
    path = f"{path}.{op}"
    if op in ("$and", "$or"):
        parts = [_evaluate(part, ids, f"{path}.{i}") for i, part in enumerate(arg)]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part if op == "$and" else combined | part
        return combined
    if op in POSITIVE:  # no chunk matches: every document but those with a chunk that does
        return ~_matching({POSITIVE[op]: arg}, ids, path)
    return _matching(node, ids, path)


def _matching(
    node: dict[str, Any], ids: Callable[[CompiledFilter], list[str]], path: str
) -> Documents:
    """The documents with a chunk matching one text condition (at `path` in the request)."""
    try:
        return Documents(_documents(ids(CompiledFilter(None, node))))
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
