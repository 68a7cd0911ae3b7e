"""An in-memory copy of every record's vector, metadata and text: where searches run.

Filters are evaluated on in-memory metadata indexes (kb.metadata_index). A search scores the
rows a filter allows exactly (one matrix product over them) when they are few, and otherwise
asks the IVF index (kb.ann) over every row, which probes as many lists as it takes to find
that filter's rows: each search takes whichever costs less (Mirror._exact_cost: a gathered
row costs GATHER_COST vectors, unless a block of the filter's rows is kept). Stores smaller
than KB_ANN_MIN_ROWS are always scored exactly.

Writers hold the store's lock and call `apply`; readers never lock: rows only grow, and a row
that dies mid-query is dropped when its record is fetched. The index is (re)built on a
background thread when the rows first reach KB_ANN_MIN_ROWS and whenever they double, and
catches up with the writes made meanwhile before it replaces the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from kb.ann import AnnConfig, AnnIndex, Lists
from kb.batcher import Batcher
from kb.bm25 import Bm25
from kb.lru import Lru
from kb.memory import release_freed_memory
from kb.metadata_index import MetadataIndex
from kb.ranking import cosines
from kb.records import DOC, HEADS, Record
from kb.texts import Texts

if TYPE_CHECKING:
    from kb.filters import CompiledFilter

log = logging.getLogger(__name__)

BLOCK_BYTES = 256 * 1024 * 1024  # gathered vectors kept per filter, least recently used out
# Up to this many query vectors, one matrix-vector product each is faster than OpenBLAS's
# product with a thin matrix (100k x 384 on 2 cores: 4 ms per vector; 12-14 ms for 4 to 16).
SMALL_BATCH = 3
SCAN_BATCH = 64  # query vectors per shared scan
# Filters whose row masks are kept between writes, least recently used out: a stream of
# filters each asked once must not keep a filter asked all the time from being kept (the
# first 64 were kept until the next write, and a text filter arriving after them was decided
# afresh for every search: 32 q/s instead of 125 at 100k documents, 16 clients).
KEPT_MASKS = 64
# Filters remembered per write, least recently asked out, to tell one asked again (whose
# gathered vectors are kept, a block) from one asked once (gathered for that search alone,
# or left to the index).
ASKED_KEYS = 4096
GATHER_ROWS = 4096  # rows a search without a block gathers at a time (6 MB at 384-d)
# What gathering and scoring a filter's row costs against a vector the index scores (a probed
# 8-bit code): 0.21-0.31 us against 0.02-0.065 us at 100k short documents (filters of 2 to 16
# of 50 authors, 4-32% of the rows); scoring a kept block's row costs about as much as the
# index's. At 24% the index took 2.5 ms, the gather 7.0 ms, a kept block 1.2 ms.
GATHER_COST = 5
# rows within this of the n-th best float32 product are scored again exactly: a float32 product
# of two unit vectors of 384 terms is off by at most about 2.3e-5 (384 x 2**-24)
TIE_SPAN = 1e-4
RESCORED = 1024  # rows scored again at most (20k near-identical chunks took 16 ms, not 0.2)
# writes whose rows of documents written anew are kept for `rewritten_since` (a search that
# overlaps more of them ranks again without a look)
REWRITES_KEPT = 64
Product = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]


class _Block:
    """The vectors of one filter's rows, gathered contiguously, and the batcher that scores
    concurrent queries with that filter in one product. It serves the mask it was gathered
    for (or an equal one)."""

    def __init__(
        self, mask: np.ndarray, rows: np.ndarray, vectors: np.ndarray, product: Product
    ) -> None:
        self.mask = mask
        self.rows = rows
        self.vectors = vectors
        self.scan = Batcher(lambda batch: product(vectors, batch), max_items=SCAN_BATCH)


def _trained(lists: Future[Lists | None] | None, rows: int) -> Lists | None:
    """The lists trained beside a load, once done, if they suit an index over `rows` rows
    (writes during the load may have changed the count); else None, and the build trains."""
    if lists is None:
        return None
    try:
        trained = lists.result()
    except BaseException:  # raised on the training's thread, not this one: the build trains
        log.warning("training the vector index beside the load failed", exc_info=True)
        return None
    return trained if trained is not None and trained.suits(rows) else None


def filter_key(where: dict[str, Any]) -> str:
    """A where-clause (or a text filter) as a digest of its canonical text: the key under
    which the mirror keeps its mask and the vectors gathered for it, until the next write. A
    digest, as a filter may hold megabytes of `$in` values: the keys of 4,096 filters asked
    (ASKED_KEYS) held 289 MiB for 300 such filters."""
    text = json.dumps(where, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class Mirror:
    """Rows of (record id, document id, metadata, vector); deleted rows are masked out."""

    def __init__(self, dim: int, generation: int, ann: AnnConfig | None = None) -> None:
        self.generation = generation  # the store write this copy has seen
        self.writes = 0  # writes applied (done): a search notes it before its filter's mask
        # (number of the write, the rows it killed of documents it wrote anew), last ones
        self._rewrites: tuple[tuple[int, np.ndarray], ...] = ()
        self.size = 0
        self.ids: list[str] = []
        # each row's metadata as JSON: a fifth of the memory of the dicts (at 100k short
        # documents, 30 MB instead of 160); a hit's is decoded when it is shown. Written by
        # json (orjson's output buffers, shrunk after, left 350 MB of fragments), read by
        # orjson (4x faster).
        self._metadata: list[str] = []
        self._texts = Texts()  # each row's chunk text, what a hit shows
        self._lock = threading.Lock()
        self._vectors = np.zeros((1024, dim), dtype=np.float32)
        self._alive = np.zeros(1024, dtype=bool)
        self._row: dict[str, int] = {}
        self._docs = np.zeros(1024, dtype=np.int64)  # each row's document number
        self._doc_numbers: dict[str, int] = {}
        self._doc_ids: list[str] = []  # by document number
        self._where = MetadataIndex()
        self._masks: Lru[str, np.ndarray] = Lru(KEPT_MASKS)  # per write
        self._blocks: OrderedDict[str, _Block] = OrderedDict()
        self._asked: Lru[str, bool] = Lru(ASKED_KEYS)  # per write
        self._gathering: set[str] = set()  # filters whose block a search is gathering now
        self.bm25 = Bm25()  # the rows' texts, for keyword search; same row numbers
        self._products = threading.Lock()
        # concurrent searches scanning every row share one pass (a matrix product)
        self._scan_all = Batcher(self._scan_all_rows, max_items=SCAN_BATCH)
        self._ann = ann or AnnConfig()
        self._index: AnnIndex | None = None
        self._building: threading.Thread | None = None
        self._lists: Future[Lists | None] | None = None  # trained for the next build

    def __len__(self) -> int:
        return len(self._row)

    # ------------------------------------------------------------ writes

    def apply(
        self,
        upserted: Sequence[Record],
        deleted: Iterable[str],
        generation: int,
        *,
        index: bool = True,
    ) -> None:
        """Apply one write. Without `index` (a load in pages), the vector index is left for
        `build_index` to build once the load is done."""
        with self._lock:
            self._note_rewrites(upserted, deleted)  # before a row dies: see rewritten_since
            killed = []
            for record_id in [*deleted, *(r.id for r in upserted)]:
                row = self._row.pop(record_id, None)
                if row is not None:
                    self._alive[row] = False
                    self.bm25.remove(row)
                    killed.append(row)
            first = self.size
            self._reserve(self.size + len(upserted))
            self._append(upserted)
            # BM25 publishes its rows last: a keyword search that finds one then finds its id,
            # metadata and document here (the other way round, one on a server, where searches
            # use the mirror while it applies a write, answered 500: an IndexError)
            self.bm25.add_many(first, [record.text for record in upserted])
            if self._index is not None:
                self._index.remove(np.asarray(killed, dtype=np.int64))
                self._index.add(np.arange(first, self.size), self._vectors[first : self.size])
            self._where.written()
            self._masks = Lru(KEPT_MASKS)
            self._blocks = OrderedDict()
            self._asked = Lru(ASKED_KEYS)
            self.generation = generation
            self.writes += 1
            if index:
                self._build_if_due()

    def _note_rewrites(self, upserted: Sequence[Record], deleted: Iterable[str]) -> None:
        """Keep the rows this write is about to kill of documents it writes anew (not
        those it deletes), numbered by the writes done before it. Called with the lock held."""
        written = {self._doc_numbers.get(record.metadata[DOC]) for record in upserted}
        rows = [
            row
            for record_id in dict.fromkeys([*deleted, *(r.id for r in upserted)])
            if (row := self._row.get(record_id)) is not None and int(self._docs[row]) in written
        ]
        if rows:
            kept = self._rewrites[-(REWRITES_KEPT - 1) :]
            self._rewrites = (*kept, (self.writes, np.asarray(rows, dtype=np.int64)))

    def rewritten_since(self, writes: int, where: dict[str, Any] | None) -> bool:
        """Whether a write done or begun since `writes` writes were done (`self.writes`
        then) killed a row passing the where-clause (any row without one) of a document it
        wrote anew. A search that decided its filter's mask before such a write ranks
        neither version: the old rows are dead, the new ones past the mask (and a search
        without a filter may have ranked while the write ran). Deleted documents do not
        count, nor new ones: a bulk load does not make searches rank again."""
        rewrites = self._rewrites  # replaced (not changed) by writes
        if not rewrites or rewrites[-1][0] < writes:
            return False
        if len(rewrites) == REWRITES_KEPT and rewrites[0][0] > writes:
            return True  # more such writes than are kept: some may have been of these rows
        rows = np.concatenate([rows for number, rows in rewrites if number >= writes])
        return where is None or bool(self._where.mask(where, self.size)[rows].any())

    def _append(self, records: Sequence[Record]) -> None:
        """Write the records into the rows from `size` on, then publish them (`size`): a
        reader finds a row by its id only once its id, metadata and text are there."""
        first, end = self.size, self.size + len(records)
        if first == end:
            return
        self._vectors[first:end] = np.asarray([r.embedding for r in records], dtype=np.float32)
        self._alive[first:end] = True
        numbers, doc_ids = self._doc_numbers, self._doc_ids
        docs = []
        for record in records:
            doc_id = record.metadata[DOC]
            number = numbers.get(doc_id)
            if number is None:
                number = numbers[doc_id] = len(doc_ids)
                doc_ids.append(doc_id)
            docs.append(number)
        self._docs[first:end] = docs
        self.ids.extend(record.id for record in records)
        self._metadata.extend(
            json.dumps(record.metadata, separators=(",", ":")) for record in records
        )
        for record in records:
            self._texts.append(record.text)
        self._row.update(zip(self.ids[first:end], range(first, end), strict=True))
        self._where.add_many(first, (record.metadata for record in records))
        self.size = end

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._alive):
            return
        capacity = max(rows, 2 * len(self._alive))
        vectors = np.zeros((capacity, self._vectors.shape[1]), dtype=np.float32)
        vectors[: self.size] = self._vectors[: self.size]
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.size] = self._alive[: self.size]
        docs = np.zeros(capacity, dtype=np.int64)
        docs[: self.size] = self._docs[: self.size]
        self._vectors, self._alive, self._docs = vectors, alive, docs  # readers keep theirs

    # ------------------------------------------------------------ the IVF index

    @property
    def searches_all(self) -> bool:
        """Whether an unfiltered search runs here: the index is built, or the rows are few
        enough to score every one (until then the store asks Chroma)."""
        return self._index is not None or len(self._row) < self._ann.min_rows

    def expect_lists(self, lists: Future[Lists | None]) -> None:
        """Lists being trained on a sample of these rows (kb.replica trains them while the
        mirror loads): the next build waits for them instead of training its own."""
        with self._lock:
            self._lists = lists

    def build_index(self) -> None:
        """Start building the vector index if the rows call for one (after a load); lists
        expected for a build that is not due are dropped (they would only go stale)."""
        with self._lock:
            self._build_if_due()
            if self._building is None:
                self._lists = None

    def wait_index(self) -> None:
        """Wait for an index build in progress (tests, shutdown)."""
        building = self._building
        if building is not None:
            building.join()

    def _build_if_due(self) -> None:
        """Start a build when the live rows reach the minimum, or twice what the index was
        trained on (its lists were sized for fewer rows). Called with the lock held."""
        live = len(self._row)
        if self._building is not None or live < self._ann.min_rows:
            return
        if self._index is not None and live < 2 * self._index.trained_rows:
            return
        self._building = threading.Thread(target=self._build, name="kb-ann", daemon=True)
        self._building.start()

    def _build(self) -> None:
        """Train an index on the live rows without the lock, then, with it, apply the writes
        made meanwhile and put it in place."""
        with self._lock:
            size, vectors = self.size, self._vectors  # rows below `size` never change
            rows = np.flatnonzero(self._alive[:size])
            pending, self._lists = self._lists, None
        try:
            index = AnnIndex.build(vectors, rows, self._ann.nprobe, _trained(pending, len(rows)))
            with self._lock:
                index.remove(rows[~self._alive[rows]])
                later = np.arange(size, self.size)[self._alive[size : self.size]]
                index.add(later, self._vectors[later])
                self._index = index
                self._building = None
                self._build_if_due()
            release_freed_memory()
        except Exception:  # searches keep scoring exactly, or asking Chroma
            log.exception("could not build the vector index")
            with self._lock:
                self._building = None

    # ------------------------------------------------------------ reads

    def matches(self, where: dict[str, Any]) -> np.ndarray:
        """Boolean mask over the rows: alive and matching the where-clause (read-only: the
        masks of the last few filters are kept until the next write)."""
        return self.selection(where)[0]

    def selection(self, where: dict[str, Any]) -> tuple[np.ndarray, str]:
        """The where-clause's mask (as `matches`) and its key, as `nearest_rows` takes them:
        the key names what the mirror keeps for the filter until the next write."""

        def decide() -> np.ndarray:
            size = self.size
            return self._where.mask(where, size) & self._alive[:size]

        key = filter_key(where)
        return self.kept(key, decide), key

    def filtered(self, flt: CompiledFilter) -> tuple[np.ndarray, str | None] | None:
        """The filter's mask and key, as `selection` gives them; None without a condition.
        A text filter decided on this mirror (`flt.text_rows`) narrows the metadata's mask
        into a mask made for this search alone, without a key: no vectors are gathered and
        kept for it."""
        text = flt.text_rows
        if text is None:
            return None if flt.where is None else self.selection(flt.where)
        mask = self.selection(flt.where)[0] if flt.where is not None else self._alive[: self.size]
        both = np.zeros(len(mask), dtype=bool)
        shared = min(len(mask), len(text.rows))
        both[:shared] = mask[:shared] & text.rows[:shared]
        return both, None

    def nearest(
        self, vector: np.ndarray, n: int, mask: np.ndarray | None = None, key: str | None = None
    ) -> list[tuple[Record, float]]:
        """The n rows (under `mask`, if given) most similar to `vector`, best first, and any
        tied with the last of them; records carry id and metadata, not text. With `key` (the
        filter, as text), the rows' vectors gathered for it are kept until the next write: the
        next query with the same filter scores a contiguous block instead of gathering again
        (the gather is most of the cost).
        """
        rows, scores = self.nearest_rows(vector, n, mask, key)
        return [
            (self.record(row), score)
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    def nearest_ids(self, vectors: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """For each vector, up to n (record id, cosine score) pairs, best first, and any tied
        with the last (as RecordCollection.nearest_ids answers from Chroma's HNSW graph, which
        can hold a record no search reaches: review helper 100)."""
        if self._index is not None:  # a few of its lists a vector
            found = [self.nearest_rows(vector, n) for vector in vectors]
        else:  # exactly: one product a slice of vectors, not a pass over every row a vector
            # (13 ms a vector at 100k rows: an add of 1,000 documents would pay seconds)
            size = self.size
            alive = np.flatnonzero(self._alive[:size])
            found = []
            for start in range(0, len(vectors), SCAN_BATCH):
                part = list(vectors[start : start + SCAN_BATCH])
                scores = self._product(self._vectors[:size], part)
                found += [
                    self._top(alive, row[alive], n, vector)
                    for row, vector in zip(scores, part, strict=True)
                ]
        answers = []
        for rows, scores in found:
            pairs = zip(rows.tolist(), scores.tolist(), strict=True)
            answers.append([(self.ids[row], score) for row, score in pairs])
        return answers

    def nearest_rows(
        self, vector: np.ndarray, n: int, mask: np.ndarray | None = None, key: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`nearest` as (rows, scores) arrays: through the index or exactly, whichever scores
        fewer vectors for this filter."""
        index = self._index
        if mask is None:
            if index is not None:
                ranked = self._ranked(vector, n, index.candidates(vector, n))
                if ranked is not None:
                    return ranked
            size, alive = self.size, self._alive
            mask = alive[:size].copy()
        allowed = int(np.count_nonzero(mask))
        # a filter asked before (since the last write) is likely asked again: if the exact
        # path gathers its rows, they are kept; one asked once keeps nothing, nor does one
        # whose rows another search is gathering to keep right now
        key = key if self._asked_before(key) and key not in self._gathering else None
        if index is not None and allowed:
            share = allowed / max(len(index), 1)
            if index.scanned(share) < self._exact_cost(allowed, mask, key):
                bits = np.packbits(mask, bitorder="little")
                candidates = index.candidates(vector, n, bits, allowed)
                ranked = self._ranked(vector, n, candidates)
                if ranked is not None:
                    return ranked
                # a tie past the candidates: scored exactly this once, where the index wins
                return self._exact(vector, n, mask, None)
        return self._exact(vector, n, mask, key)

    def _asked_before(self, key: str | None) -> bool:
        """Whether a search was made with this filter since the last write (remembering the
        last ASKED_KEYS filters)."""
        if key is None:
            return False
        asked = self._asked  # replaced (not cleared) by writes
        if asked.get(key):
            return True
        asked.put(key, True)
        return False

    def _ranked(
        self, vector: np.ndarray, n: int, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The n best of the index's candidates by exact cosine score, best first (see
        `_top`); None when the candidates end inside a tie with the n-th: identical vectors
        share their 8-bit codes and FAISS keeps any of them, so more of the tie may lie past
        the candidates (the caller then scores every row)."""
        scores = self._vectors[rows] @ vector
        if n >= rows.size:
            return self._top(rows, scores, n, vector)
        nth = _nth(scores, n)
        if scores.min() >= nth - TIE_SPAN:
            return None
        return self._top(rows, scores, n, vector, nth)

    def _exact_cost(self, allowed: int, mask: np.ndarray, key: str | None) -> int:
        """An exact search's cost, in vectors the index would score for it: a kept block's
        rows; every row for a broad filter (one pass, no gather); else the filter's rows,
        GATHER_COST each. Even for a filter asked again: a block pays only if it is read
        again before others push it out, and where the index beats a gather, a stream of
        such filters (sixteen clients each asking the others' filters in turn) rebuilt
        blocks faster than they were read: 95-100 q/s and 1.5 GB at 100k, against 169 q/s
        and 1.1 GB through the index."""
        block = self._blocks.get(key) if key is not None else None
        if block is not None and _same(block.mask, mask):  # one of an older mask is not read
            return allowed
        return len(mask) if _broad(allowed, len(mask)) else allowed * GATHER_COST

    def _row_bytes(self) -> int:
        return int(self._vectors.itemsize * self._vectors.shape[1])

    def _exact(
        self, vector: np.ndarray, n: int, mask: np.ndarray, key: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, block = self._block(mask, key)
        if not rows.size:
            return rows, np.zeros(0, dtype=np.float32)
        if block is not None:
            scores = block.scan([vector])[0]
        elif _broad(rows.size, len(mask)):
            scores = self._scan_all([(vector, len(mask))])[0][: len(mask)][rows]
        else:
            scores = self._gathered_scores(rows, vector)
        return self._top(rows, scores, n, vector)

    def _gathered_scores(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """The rows' scores, gathered GATHER_ROWS at a time: a search holds one slice's copy,
        not its filter's (sixteen searches of a 25% filter at 100k held 16 copies of 37 MB
        while they waited for the product's lock)."""
        scores = np.empty(rows.size, dtype=np.float32)
        for start in range(0, rows.size, GATHER_ROWS):
            part = rows[start : start + GATHER_ROWS]
            scores[start : start + part.size] = self._product(self._vectors[part], [vector])[0]
        return scores

    def _top(
        self,
        rows: np.ndarray,
        scores: np.ndarray,
        n: int,
        vector: np.ndarray,
        nth: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The n best of `rows` by cosine score, best first, and every row tied with the last
        of them (callers order equal scores by id, so which of a tie made the cut must not
        depend on the rows' order). `scores` are the rows' float32 products, which give equal
        vectors scores a few ulps apart: the rows within TIE_SPAN of the n-th are scored again
        by `ranking.cosines`, so identical texts tie wherever they sit (up to RESCORED rows:
        past that, a crowd of near-identical rows keeps the float32 order). `nth`, the n-th
        best of `scores`, when the caller has it already."""
        if n < rows.size:
            nth = _nth(scores, n) if nth is None else nth
            near = np.flatnonzero(scores >= nth - TIE_SPAN)
            most = max(RESCORED, 2 * n)
            if near.size > most:  # a crowd of near-identical rows: its best by float32 only
                near = near[np.argpartition(-scores[near], most - 1)[:most]]
            rows = rows[near]
        exact = cosines(self._vectors[rows], vector)
        order = np.argsort(-exact, kind="stable")
        if n < order.size:
            order = order[: n + int(np.count_nonzero(exact[order[n:]] == exact[order[n - 1]]))]
        return rows[order], exact[order]

    def _block(self, mask: np.ndarray, key: str | None) -> tuple[np.ndarray, _Block | None]:
        blocks = self._blocks  # replaced (not cleared) by writes: a reader keeps its own
        found = blocks.get(key) if key is not None else None
        # only for its own rows: a search that took a mask before a write may gather after
        # it, and its block must not serve the searches that take the write's new mask (the
        # same object while the mirror keeps it; once pushed out of the kept masks, an equal one)
        if key is not None and found is not None and _same(found.mask, mask):
            with suppress(KeyError):  # pushed out meanwhile: still this search's to use
                blocks.move_to_end(key)
            return found.rows, found
        rows = np.flatnonzero(mask)
        if key is None or not rows.size or rows.size * self._row_bytes() > BLOCK_BYTES / 2:
            return rows, None
        with self._lock:  # one search gathers a block to keep; one meanwhile keeps nothing
            if key in self._gathering:
                return rows, None
            self._gathering.add(key)
        try:
            block = _Block(mask, rows, self._vectors[rows], self._product)
            with self._lock:
                if blocks is self._blocks:
                    blocks[key] = block
                    while (
                        # list(): searches move blocks to the end while this sums them
                        sum(b.vectors.nbytes for b in list(blocks.values())) > BLOCK_BYTES
                        and len(blocks) > 1
                    ):
                        blocks.popitem(last=False)
        finally:
            with self._lock:
                self._gathering.discard(key)
        return rows, block

    def _scan_all_rows(self, items: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """Scores of every row for each (vector, rows it needs); rows only grow, and the
        newest array holds every older row, so the widest request is enough for all."""
        width = max(needed for _, needed in items)
        return self._product(self._vectors[:width], [vector for vector, _ in items])

    def _product(self, matrix: np.ndarray, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """matrix @ each vector, one product at a time: concurrent BLAS calls, each wanting
        every core, slowed each other down fourfold with 8 threads on 2 cores."""
        with self._products:
            if len(vectors) <= SMALL_BATCH:
                return np.stack([matrix @ vector for vector in vectors])
            return np.stack(vectors) @ matrix.T

    def keyword(
        self, terms: Sequence[str], limit: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `limit` best rows by BM25 for these (folded) terms, under `mask` if given, and
        their scores, best first."""
        return self.bm25.search(terms, limit, mask)

    def cosines(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """The cosine score of `vector` with each of these rows (one gather, one product)."""
        if not len(rows):
            return np.zeros(0, dtype=np.float32)
        return cosines(self._vectors[rows], vector)

    def first_per_document(
        self, rows: np.ndarray, scores: np.ndarray, limit: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From rows ranked best first, each document's first (best) row, up to `limit`
        documents: (rows, scores, document numbers), still best first. Documents tied on
        the score of the last one taken are taken in id order (in row order, which of them
        made the cut depended on the order they were added in)."""
        docs = self._docs[rows]
        first = np.sort(np.unique(docs, return_index=True)[1])
        if len(first) > limit and scores[first[limit - 1]] == scores[first[limit]]:
            tied = np.flatnonzero(scores[first] == scores[first[limit - 1]])
            first[tied] = first[tied][np.argsort(self.doc_ids_of(docs[first[tied]]))]
        first = first[:limit]
        return rows[first], scores[first], docs[first]

    # ------------------------------------------------------------ text filters

    @property
    def scans_texts(self) -> bool:
        """Whether a substring test of every row's text is cheap: few texts are compressed."""
        return self._texts.cheap_to_scan

    def kept(self, key: str, decide: Callable[[], np.ndarray]) -> np.ndarray:
        """The mask `decide` gives over the rows, kept under `key` (a where-clause's, or a
        text filter's: kb.document_filter) until the next write, for the KEPT_MASKS keys
        used last. A mask kept during a write may cover fewer rows than there are once it is
        done: readers take the rows past a mask as not allowed."""
        masks = self._masks  # first: a write replaces it after changing the rows decide reads
        mask = masks.get(key)
        if mask is None:
            mask = decide()
            mask.flags.writeable = False
            masks.put(key, mask)  # its own lock: a write holds the mirror's as long as it runs
        return mask

    def extent(self) -> tuple[int, int]:
        """How many rows and documents there are now: a text filter is decided below both."""
        size = self.size  # first: the documents of these rows are numbered by then
        return size, len(self._doc_ids)

    def rows_containing(self, text: str, size: int) -> np.ndarray:
        """Mask of the live rows below `size` whose text contains `text` (Texts.containing)."""
        return self._texts.containing(text, size) & self._alive[:size]

    def rows_of(self, record_ids: Iterable[str], size: int) -> np.ndarray:
        """Mask of the live rows below `size` holding these records (ids it lacks: none)."""
        rows = np.fromiter(
            (row for row in map(self._row.get, record_ids) if row is not None and row < size),
            dtype=np.int64,
        )
        mask = np.zeros(size, dtype=bool)
        mask[rows] = True
        return mask & self._alive[:size]

    def documents_with(self, rows: np.ndarray, documents: int) -> np.ndarray:
        """Mask of the document numbers below `documents` with one of the rows masked."""
        found = np.zeros(documents, dtype=bool)
        found[self._docs[: len(rows)][rows]] = True
        return found

    def rows_of_documents(self, documents: np.ndarray, size: int) -> np.ndarray:
        """Mask of the live rows below `size` of the documents masked (by number)."""
        return documents[self._docs[:size]] & self._alive[:size]

    def documents(self) -> int:
        """How many live documents there are."""
        return int(self.matches(HEADS).sum())

    def head_metadata(self) -> tuple[int, Iterator[dict[str, Any]]]:
        """How many live documents there are, and the metadata of each one's first chunk,
        decoded one at a time: a list of them all would be 100k dicts whose creation sets off
        the garbage collector's full passes (a second at 100k documents, not 0.2)."""
        rows = np.flatnonzero(self.matches(HEADS)).tolist()
        return len(rows), (orjson.loads(self._metadata[row]) for row in rows)

    def row(self, record_id: str) -> int | None:
        return self._row.get(record_id)

    def record(self, row: int, text: bool = False) -> Record:
        """A row as a record (metadata decoded afresh: the caller's to change), text if
        asked."""
        metadata = orjson.loads(self._metadata[row])
        return Record(self.ids[row], self._texts[row] if text else "", metadata)

    def doc_ids_of(self, numbers: np.ndarray) -> np.ndarray:
        """Document numbers (as `first_per_document` gives them) as an array of their ids."""
        return np.array([self._doc_ids[n] for n in numbers.tolist()], dtype=str)

    def doc_id(self, row: int) -> str:
        """The id of the document a row is a chunk of."""
        return self._doc_ids[int(self._docs[row])]

    def records(
        self, hits: Sequence[tuple[str, float]], texts: bool = False
    ) -> list[tuple[Record, float]]:
        """(id, score) pairs as (record, score), with the text only if asked; ids it lacks
        are dropped."""
        rows = [(self._row.get(record_id), score) for record_id, score in hits]
        return [(self.record(row, texts), score) for row, score in rows if row is not None]


def _same(kept: np.ndarray, mask: np.ndarray) -> bool:
    return kept is mask or np.array_equal(kept, mask)


def _nth(scores: np.ndarray, n: int) -> float:
    """The n-th highest of the scores (n < len(scores))."""
    return float(np.partition(scores, scores.size - n)[scores.size - n])


def _broad(allowed: int, rows: int) -> bool:
    """Whether a filter allows so many rows that one pass over all of them beats gathering
    its own (a third or more)."""
    return allowed * 3 > rows
