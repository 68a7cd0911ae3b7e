"""Near-duplicate detection: documents whose chunks are almost the same vectors, one by one
(found through the nearest neighbours of their chunks: the first, or the most distinctive)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Set

import numpy as np

from kb.collection import RecordCollection
from kb.filters import CompiledFilter
from kb.ranking import clamp_cosine
from kb.records import CHUNKS, HEADS, Record, chunk_id, chunk_of, doc_id_of

FIRST_CHUNKS = CompiledFilter(where=HEADS)
BATCH = 256
NEIGHBOURS = 4  # neighbours a chunk of an added document is asked for first
# A document all of whose chunks' lists are full of near-copies (a text all template) is
# asked again, WIDEN times as many neighbours a round, up to WIDEST.
WIDEN, WIDEST = 8, 2048

Vectors = dict[str, np.ndarray]  # document id -> its chunks' vectors, one row per chunk
Pair = tuple[str, str, float]  # document id, the stored document it nearly duplicates, score
# vectors, n -> per vector up to n (record id, cosine score), best first
Nearest = Callable[[np.ndarray, int], list[list[tuple[str, float]]]]


def nearest_stored(
    records: RecordCollection,
    new: Sequence[Record],
    min_score: float,
    replaced: Set[str] = frozenset(),
    nearest: Nearest | None = None,
) -> dict[str, tuple[str, float]]:
    """For each new document (all its chunk records given), the most similar other stored
    document scoring at least `min_score`: new id -> (existing id, score), compared whole
    (`_pairs`: a shared preamble does not make two documents duplicates). Documents in
    `replaced` are being rewritten by the same write, so their stored text is no match.
    `nearest` finds the neighbours (kb's in-memory copy, when current): Chroma's HNSW graph
    can hold a record no search reaches, and an exact copy of it was accepted under
    on_duplicate "reject" (review helper 100)."""
    docs = _whole(new)
    if not docs or not records.count():
        return {}
    found: dict[str, tuple[str, float]] = {}
    near = nearest or records.nearest_ids
    for doc, other, score in _pairs(records, docs, min_score, NEIGHBOURS, replaced, {}, near):
        if doc not in found or score > found[doc][1]:
            found[doc] = (other, score)
    return found


def groups(records: RecordCollection, min_score: float, neighbours: int = 5) -> list[list[str]]:
    """Groups of stored documents linked by near-duplicate pairs (each group sorted)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for batch in records.pages(FIRST_CHUNKS, BATCH, embeddings=True, texts=False):
        docs = _with_later_chunks(records, batch)
        pairs = _pairs(
            records, docs, min_score, neighbours + 1, frozenset(), docs, records.nearest_ids, True
        )
        for doc, other, _ in pairs:
            parent[root(other)] = root(doc)
    members: dict[str, list[str]] = {}
    for doc in parent:
        members.setdefault(root(doc), []).append(doc)
    return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda g: g[0])


def _pairs(
    records: RecordCollection,
    docs: Vectors,
    min_score: float,
    k: int,
    skip: Set[str],
    known: Vectors,
    nearest: Nearest,
    every: bool = False,
) -> list[Pair]:
    """The stored documents each of `docs` nearly duplicates, compared whole: as many chunks,
    and every chunk scoring `min_score` with its counterpart (the lowest score counts).

    So a duplicate is among the `k` neighbours of each chunk, at the same chunk number,
    unless that chunk's list is cut off (its last neighbour still scores `min_score`): the
    candidates are those every list not cut off names. The first chunk is asked first; it
    decides alone unless cut off, as for most documents (one search each). A first chunk a
    template shares (a preamble) is cut off by its many copies; the document's other chunks
    are then asked, and a distinctive one (the body) names the few real candidates, however
    large the template's family (more neighbours of the first chunk would cost more with
    every memo, and fail beyond any cap). A document all of whose lists are cut off, and no
    duplicate among them, is asked again with WIDEN times as many neighbours, up to WIDEST;
    with `every`, one with duplicates too, until a list is not cut off: all its pairs are
    found (a family of more than `k` copies of one text was split in groups, each copy's list
    holding only its closest copies). `known` holds stored documents' vectors already read;
    `skip`, documents that match none."""
    found: list[Pair] = []
    checked: set[tuple[str, str]] = set()
    lists = _first_lists(nearest, docs, min_score, k, skip)
    while True:
        candidates, cut_off = _candidates(lists)
        pairs = [(d, o) for d, others in candidates.items() for o in sorted(others)]
        pairs = [pair for pair in pairs if pair not in checked]
        checked.update(pairs)
        confirmed = _confirmed(pairs, docs, _stored(records, pairs, docs, known), min_score)
        found += confirmed
        wider = sorted(set(cut_off) - (set() if every else {doc for doc, _, _ in confirmed}))
        if not wider or k >= WIDEST:
            return found
        k = min(k * WIDEN, WIDEST)
        asked = [(doc, n) for doc in wider for n in range(len(docs[doc]))]
        lists = _neighbours(nearest, docs, asked, min_score, k, skip)


Lists = dict[str, list[tuple[bool, set[str]]]]  # document -> per chunk asked: (its list was
# not cut off, the other documents found at the same chunk number scoring `min_score`)


def _first_lists(
    nearest: Nearest, docs: Vectors, min_score: float, k: int, skip: Set[str]
) -> Lists:
    """The first chunks' lists, and the later chunks' of documents whose first is cut off."""
    lists = _neighbours(nearest, docs, [(doc, 0) for doc in docs], min_score, k, skip)
    later = [
        (d, n) for d, (first, *_) in lists.items() if not first[0] for n in range(1, len(docs[d]))
    ]
    for doc, more in _neighbours(nearest, docs, later, min_score, k, skip).items():
        lists[doc] += more
    return lists


def _neighbours(
    nearest: Nearest,
    docs: Vectors,
    asked: Sequence[tuple[str, int]],
    min_score: float,
    k: int,
    skip: Set[str],
) -> Lists:
    """The lists of the asked chunks (document, chunk number), in one search."""
    if not asked:
        return {}
    vectors = np.asarray([docs[doc][n] for doc, n in asked], dtype=np.float32)
    lists: Lists = {}
    for (doc, n), hits in zip(asked, nearest(vectors, k), strict=True):
        alike = {
            other
            for rid, score in hits
            if score >= min_score
            and chunk_of(rid) == n
            and (other := doc_id_of(rid)) != doc
            and other not in skip
        }
        lists.setdefault(doc, []).append((len(hits) < k or hits[-1][1] < min_score, alike))
    return lists


def _candidates(lists: Lists) -> tuple[dict[str, set[str]], list[str]]:
    """Per document, the documents every list not cut off names (any list, if all are); and
    the documents all of whose lists are cut off."""
    candidates: dict[str, set[str]] = {}
    cut_off = []
    for doc, found in lists.items():
        if complete := [alike for whole, alike in found if whole]:
            candidates[doc] = set.intersection(*complete)
        else:
            candidates[doc] = set().union(*(alike for _, alike in found))
            cut_off.append(doc)
    return candidates, cut_off


def _confirmed(
    pairs: Sequence[tuple[str, str]], docs: Vectors, stored: Vectors, min_score: float
) -> list[Pair]:
    """The pairs as many chunks long whose lowest chunk-by-chunk score is `min_score` or more."""
    kept = []
    for doc, other in pairs:
        a, b = docs[doc], stored.get(other)
        if b is None or len(a) != len(b):  # another length, or deleted meanwhile
            continue
        # cosines (the vectors are normalized), an identical chunk's made 1 as search's are
        score = clamp_cosine(float(np.min(np.einsum("ij,ij->i", a, b))))
        if score >= min_score:
            kept.append((doc, other, score))
    return kept


def _stored(
    records: RecordCollection, pairs: Sequence[tuple[str, str]], docs: Vectors, known: Vectors
) -> Vectors:
    """The vectors of the stored documents the pairs name: from `known`, else read (only
    candidates are, and of those only the ones as many chunks long as their pair's document)."""
    wanted = {other for _, other in pairs}
    found = {doc: known[doc] for doc in wanted if doc in known}
    if missing := wanted - found.keys():
        lengths = {len(docs[doc]) for doc, other in pairs if other in missing}
        heads = records.get(sorted(missing), embeddings=True, texts=False)
        found |= _with_later_chunks(records, [h for h in heads if _chunks(h) in lengths])
    return found


def _with_later_chunks(records: RecordCollection, heads: Sequence[Record]) -> Vectors:
    """The whole documents of these stored first chunks (their later chunks read)."""
    ids = [chunk_id(head.doc_id, n) for head in heads for n in range(1, _chunks(head))]
    return _whole([*heads, *(records.get(ids, embeddings=True, texts=False) if ids else [])])


def _chunks(record: Record) -> int:
    return int(record.metadata.get(CHUNKS, 1))


def _whole(found: Iterable[Record]) -> Vectors:
    """The vectors of the documents whose every chunk is among `found` (a chunk missing: a
    write interrupted, or a delete meanwhile, and the document is left out)."""
    chunks: dict[str, dict[int, Record]] = {}
    for record in found:
        chunks.setdefault(record.doc_id, {})[record.chunk] = record
    whole = {}
    for doc, parts in chunks.items():
        count = _chunks(parts[0]) if 0 in parts else 0
        if count and all(n in parts for n in range(count)):
            whole[doc] = np.asarray([parts[n].embedding for n in range(count)], dtype=np.float64)
    return whole
