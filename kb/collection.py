"""Chroma access: open the cosine collection, guard its model, move records in batches."""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence, Set
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from kb import chroma_file
from kb.batcher import Batcher
from kb.chroma_http import bound, probe, timeout_message, unanswered_write
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import (
    ConfigError,
    KBError,
    ModelMismatch,
    StoreTimeout,
    StoreUnavailable,
    ValidationFailed,
    named,
)
from kb.filters import CompiledFilter, and_where
from kb.lock import StoreLock
from kb.logs import Thinned
from kb.ranking import cosine_of_distance
from kb.records import DOC, Record, as_held, whole_documents
from kb.staging import finish_restore

log = logging.getLogger(__name__)

T = TypeVar("T")
# Document ids one where-clause binds: SQLite binds at most 32,766 values a statement, and a
# user's filter may bind up to 10,000 more (KB_MAX_FILTER_VALUES' ceiling).
ID_LIST_CAP = 15_000
# Records one query call may read with their metadata (its batch x n_results): the ids are
# bound in one statement too (and a where-clause's own values in another)
QUERY_READ_IDS = 30_000
MODEL_KEY, DIM_KEY, FINGERPRINT_KEY = "kb_model", "kb_dim", "kb_fingerprint"
SEGMENTS_QUERY = "SELECT id FROM segments WHERE collection = ?"  # a collection's folders
CALIBRATED_KEY = "kb_min_score"  # the threshold `kb calibrate --write` stored: the model's
# Seconds between the tries of a write SQLite found busy: 1.6 s in all.
BUSY_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
# A Chroma server refuses a request above its payload limit (about 40 MB by default: 5,461
# records of 6,000-character texts were "Payload too large" here, of 4,500 went through). Every
# chunk carries its document's metadata, so long documents with a large metadata field filled
# one call of max_batch records with more: a write to a server is cut at this many bytes too.
SERVER_CALL_BYTES = 16 * 1024 * 1024
VECTOR_BYTES_PER_DIM = 12  # a vector's share of a request, bounded as JSON numbers


@contextmanager
def chroma_errors() -> Iterator[None]:
    """Map Chroma's exceptions to KBError so no store failure reaches a client as a bare 500."""
    try:
        yield
    except KBError:
        raise
    except Exception as exc:
        if _refused(exc):  # Chroma's own validation: a request kb let through
            raise ValidationFailed(f"the store rejected the request: {exc}") from exc
        if (timed_out := timeout_message(exc)) is not None:
            log.error("store operation failed: %s", timed_out)
            error = StoreTimeout(timed_out)
            error.may_have_landed = unanswered_write(exc)
            raise error from exc
        failure = f"{type(exc).__name__}: {exc}"
        # one line each, a traceback (4 kB) at most once a minute: with the server away,
        # every /metrics scrape and /health probe wrote one (review helper 77)
        if (added := _TRACEBACKS.take()) is not None:
            log.error("store operation failed: %s%s", failure, added, exc_info=True)
        else:
            log.error("store operation failed: %s", failure)
        raise StoreUnavailable(f"the store failed: {failure}") from exc


_TRACEBACKS = Thinned(60.0)  # the process's store failures whose traceback is logged


def chroma_write(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, a Chroma write, under `chroma_errors` and tried again while
    SQLite reports the store busy.

    SQLite answers "database is locked" at once, without waiting out its busy timeout, when a
    transaction that began by reading must upgrade to write while another connection writes.
    Chroma's update of a collection does, and something an embedded store does as it opens
    holds the write lock for some milliseconds (a changed KB_HNSW_EF_SEARCH failed about one
    start in a hundred; with its write delayed 50 or 300 ms, none in 600). A Chroma call
    may have had a part applied before a later transaction of it was refused, but every
    write kb makes (add, upsert, delete, modify, create) lands the same whether it runs once
    or twice, so trying again is safe."""
    for wait in BUSY_WAITS:
        with chroma_errors():
            try:
                return call(*args, **kwargs)
            except Exception as exc:
                if not _busy(exc):
                    raise
                log.info("the store is busy (%s); writing again in %.0f ms", exc, wait * 1000)
        time.sleep(wait)
    with chroma_errors():
        return call(*args, **kwargs)


def _busy(exc: Exception) -> bool:
    """SQLite's SQLITE_BUSY, as Chroma reports it embedded and over HTTP."""
    return "database is locked" in str(exc)


def _refused(exc: Exception) -> bool:
    """Whether Chroma refused the request as invalid (a bad where clause, a regex its engine
    cannot parse) rather than failed: its client raises ValueError, its engine (embedded or
    over HTTP) InvalidArgumentError, which is no ValueError."""
    from chromadb.errors import InvalidArgumentError

    return isinstance(exc, ValueError | InvalidArgumentError)


def make_client(settings: Settings) -> Any:
    """An embedded client on KB_CHROMA_PATH, or an HTTP client of the server at KB_CHROMA_URL."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_url:
        url = urlsplit(settings.chroma_url)
        try:
            probe(settings.chroma_url, settings)
            client = chromadb.HttpClient(
                host=url.hostname or "localhost",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
        except Exception as exc:  # refused, unreachable, silent, not a Chroma server
            said = timeout_message(exc) or _one_line(exc)
            raise StoreUnavailable(
                f"cannot reach the Chroma server at {settings.chroma_url} (KB_CHROMA_URL): {said}"
            ) from exc
        bound(client, settings)
        return client
    settings.chroma_path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(settings.chroma_path), settings=chroma_settings)


def _one_line(exc: Exception) -> str:
    """Why the server could not be reached, in one line, as `kb serve --workers` says it
    (kb.chroma_process.check): httpx's answer to a service that is not Chroma added a line
    "For more information check: https://developer.mozilla.org/..." (review helper 91)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.url} answered HTTP {exc.response.status_code}: not a Chroma server?"
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


SHOWN_NAMES = 10  # collections a "no collection" error lists


class RecordCollection:
    """One Chroma collection in cosine space, holding vectors from exactly one model."""

    read_page = 10_000  # records a get without ids or a limit asks Chroma for at a time

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        client: Any | None = None,
        *,
        existing: bool = False,
    ) -> None:
        """`existing`: the collection must be there already (commands that only read: one
        created for a mistyped KB_COLLECTION would read as an empty knowledge base)."""
        self.settings = settings
        self.name = settings.collection
        self.mode = "server" if settings.chroma_url else "embedded"
        # when a read last came back (monotonic): a long poll that still gets answers (a
        # rebuild of the copies, page by page) is not a hung server (SharedReplica's /health)
        self.answered_at = -math.inf
        self.location = settings.chroma_url or str(settings.chroma_path)
        self.call_bytes = SERVER_CALL_BYTES if self.mode == "server" else 0  # 0: no bound
        # One process per embedded store; a server takes any number of clients.
        embedded = client is None and self.mode == "embedded"
        self._lock = StoreLock(settings.chroma_path) if embedded else None
        self._nearest = Batcher(self._nearest_batch, max_items=64)
        self._owned = True  # closes its client (not a collection `beside` it)
        try:
            self._client = client if client is not None else make_client(settings)
            with chroma_errors():
                self.max_batch = int(self._client.get_max_batch_size())
            if embedded:  # a restore --replace killed part-way (kb.staging)
                finish_restore(self)
            if existing:
                self._require()
            self._open(embedder)
        except BaseException:
            self.close()
            raise

    def _require(self) -> None:
        from chromadb.errors import NotFoundError

        with chroma_errors():
            try:
                self._client.get_collection(self.name, embedding_function=None)
                return
            except NotFoundError:
                names = sorted(collection.name for collection in self._client.list_collections())
        held = ", ".join(f"'{name}'" for name in names[:SHOWN_NAMES]) or "none"
        if len(names) > SHOWN_NAMES:
            held += f" and {len(names) - SHOWN_NAMES} more"
        raise ConfigError(
            f"no collection '{self.name}' (KB_COLLECTION) in {self.location}; "
            f"its collections: {held}"
        )

    def _open(self, embedder: Embedder) -> None:
        self._col = chroma_write(
            self._client.get_or_create_collection,
            self.name,
            configuration=self._configuration(),
            metadata=_model_metadata(embedder),
            embedding_function=None,
        )
        self._check_space()
        self._check_model(embedder)
        self._tune_search()

    def _configuration(self) -> dict[str, Any]:
        return {"hnsw": {"space": "cosine", "ef_search": self.settings.hnsw_ef_search}}

    def beside(self, suffix: str, metadata: dict[str, Any]) -> RecordCollection:
        """A new collection '<name>-<suffix>' beside this one, of its configuration, with
        `metadata`, as records written and read like this one's (`named`)."""
        name = f"{self.name}-{suffix}"
        col = chroma_write(
            self._client.create_collection,
            name,
            configuration=self._configuration(),
            metadata=metadata,
            embedding_function=None,
        )
        return self._sibling(name, col)

    def named(self, name: str) -> RecordCollection:
        """Another collection of the store, as records written and read like this one's. It
        shares this one's client: closing it closes nothing."""
        col = chroma_write(self._client.get_collection, name, embedding_function=None)
        return self._sibling(name, col)

    def view(self) -> RecordCollection:
        """A second object on this collection, which keeps naming it when this one is
        pointed at another (`take_place_of`); closing it closes nothing."""
        return self._sibling(self.name, self._col)

    def _sibling(self, name: str, col: Any) -> RecordCollection:
        other = copy.copy(self)
        other.name, other._col, other._lock, other._owned = name, col, None, False
        return other

    def collection_names(self) -> set[str]:
        with chroma_errors():
            return {collection.name for collection in self._client.list_collections()}

    def rename(self, name: str) -> None:
        chroma_write(self._col.modify, name=name)
        self.name = name

    def take_place_of(self, other: RecordCollection) -> None:
        """Become `other` (its name; renamed already), as it is opened: the store's object
        keeps serving, now this collection's records."""
        other.name, other._col = self.name, self._col
        other.reread_settings()

    def drop(self) -> None:
        """Delete this collection, emptied first: Chroma 1.5's delete_collection left
        list-valued metadata behind, which the next records written to any collection of
        the store took over. Embedded, its vector index's folder goes too: Chroma 1.5.9 left
        it on disk for good (chroma #5520; about 1.7 kB a record each restore --replace
        stranded: review helper 97)."""
        folders = self._segment_folders()
        self.delete(self.ids())
        chroma_write(self._client.delete_collection, self.name)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    def _segment_folders(self) -> list[Path]:
        """The folders of this embedded collection's segments (none on a server). Best
        effort: a folder left behind is better than a failed restore, or a store that no
        longer opens (every open failed where it finished a restore: review helper 98); it
        is logged (since kb.chroma_file it was not)."""
        if self.mode != "embedded":
            return []
        store = Path(self.settings.chroma_path).expanduser().absolute()
        left = f"the vector index folders of '{self.name}' are left in {store}"
        rows = chroma_file.query(store, SEGMENTS_QUERY, (str(self._col.id),), unread=left) or []
        return [store / str(row[0]) for row in rows if (store / str(row[0])).is_dir()]

    def side_collection(self, suffix: str) -> Any:
        """A helper collection beside this one (kb's change log), created if missing."""
        return chroma_write(
            self._client.get_or_create_collection, f"{self.name}-{suffix}", embedding_function=None
        )

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and self._owned:
            _close_client(client)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------ guards

    def _check_space(self) -> None:
        config = self._col.configuration or {}
        space = (config.get("hnsw") or {}).get("space") or (self._col.metadata or {}).get(
            "hnsw:space"
        )
        if space != "cosine":
            raise ConfigError(
                f"collection '{self.name}' uses the '{space}' space; kb needs cosine. "
                "Use another KB_COLLECTION."
            )

    def _check_model(self, embedder: Embedder) -> None:
        meta = dict(self._col.metadata or {})
        if MODEL_KEY not in meta:
            if self._col.count():
                raise ConfigError(
                    f"collection '{self.name}' holds data that kb did not write (no model "
                    "record); use another KB_COLLECTION"
                )
            chroma_write(self._col.modify, metadata={**meta, **_model_metadata(embedder)})
            return
        recorded = meta.get(FINGERPRINT_KEY)
        if meta.get(DIM_KEY) == embedder.dim and recorded in embedder.former_fingerprints:
            log.info(
                "collection %s: re-recording the model's fingerprint %s (an earlier kb's) as %s",
                self.name, recorded, embedder.fingerprint,
            )  # fmt: skip
            chroma_write(self._col.modify, metadata={**meta, FINGERPRINT_KEY: embedder.fingerprint})
            return
        if meta.get(DIM_KEY) != embedder.dim or recorded != embedder.fingerprint:
            if self._adoptable(embedder):
                # nothing to mix: a command refused after opening it (a restore of a backup of
                # another model) left it recording its model, which then refused the right
                # one for good (review helper 83); the threshold calibrated for that model
                # goes with it (review helper 86)
                log.info(
                    "collection %s is empty: recording the model %s in place of %s",
                    self.name, embedder.name, meta[MODEL_KEY],
                )  # fmt: skip
                kept = {key: value for key, value in meta.items() if key != CALIBRATED_KEY}
                chroma_write(self._col.modify, metadata={**kept, **_model_metadata(embedder)})
                self.reread_settings()
                return
            empty = (
                " It holds no records: delete it (Chroma's delete_collection) to use the name."
                if not self._col.count()
                else ""
            )
            raise ModelMismatch(
                f"collection '{self.name}' in {self.location} was built with {meta[MODEL_KEY]} "
                f"({meta.get(DIM_KEY)}-d, fingerprint {meta.get(FINGERPRINT_KEY)}), but the "
                f"configured model is {embedder.name} ({embedder.dim}-d, fingerprint "
                f"{embedder.fingerprint}). Mixing vector spaces would return wrong matches: "
                f"set KB_MODEL back, choose another KB_COLLECTION, or export and re-load.{empty}"
            )

    def _adoptable(self, embedder: Embedder) -> bool:
        """Whether an empty collection may take this model: embedded (one process at a time;
        on a server another process of the recorded model may be writing), and of no
        dimension yet or this model's (Chroma keeps the dimension of the vectors a
        collection once held, and refused every add of another: review helper 86)."""
        if self.mode != "embedded" or self._col.count():
            return False
        held = getattr(getattr(self._col, "_model", None), "dimension", None)
        return held is None or held == embedder.dim

    def _tune_search(self) -> None:
        """Give an existing collection the configured ef_search (the one HNSW setting Chroma
        lets change). Done before the first query, so it applies to this process's index."""
        wanted = self.settings.hnsw_ef_search
        if self.ef_search != wanted:
            chroma_write(self._col.modify, configuration={"hnsw": {"ef_search": wanted}})
            self.reread_settings()

    @property
    def ef_search(self) -> int | None:
        return ((self._col.configuration or {}).get("hnsw") or {}).get("ef_search")

    # ------------------------------------------------------------ collection metadata

    def settings_values(self) -> dict[str, Any]:
        """Every setting kept in the collection's metadata, as this process last read them."""
        return dict(self._col.metadata or {})

    def settings_value(self, key: str) -> Any:
        """A setting kept in the collection's metadata, as this process last read it (on a
        Chroma server, another process's writes are read again when its change log says so:
        `reread_settings`)."""
        return (self._col.metadata or {}).get(key)

    def set_settings_value(self, key: str, value: Any) -> None:
        """Write one setting (None removes it), keeping the others. On a Chroma server they
        are read again first: merged into this process's copy, a setting another process
        wrote since this one opened was put back to the value this one had read."""
        if self.mode == "server":
            self.reread_settings()
        chroma_write(self._col.modify, metadata={**(self._col.metadata or {}), key: value})

    def reread_settings(self) -> None:
        """Read the collection's metadata (its settings) again from Chroma."""
        with chroma_errors():
            self._col = self._client.get_collection(self.name, embedding_function=None)

    # ------------------------------------------------------------ reads

    def count(self) -> int:
        with chroma_errors():
            return int(self._col.count())

    def ids(self, flt: CompiledFilter | None = None) -> list[str]:
        """Every record id matching the filter (ids only, cheap)."""
        flt = flt or CompiledFilter()
        found: list[str] = []
        for where in split_id_lists(flt.where):
            with chroma_errors():
                got = self._col.get(where=where, where_document=flt.where_document, include=[])
            self.answered_at = time.monotonic()
            found += got["ids"]
        return found

    def metadatas(self, flt: CompiledFilter) -> list[dict[str, Any]]:
        """The metadata of every record matching the filter (no texts read)."""
        return [record.metadata for record in self.get(flt=flt, texts=False)]

    def get(
        self,
        ids: Sequence[str] | None = None,
        flt: CompiledFilter | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
        embeddings: bool = False,
        texts: bool = True,
    ) -> list[Record]:
        """Records by id and/or filter; without `texts` their texts are left empty (cheaper).
        Without ids or a limit, every match is read `read_page` records at a time: Chroma
        fails a single `get` of ~32k or more records' documents or metadata ("too many SQL
        variables")."""
        flt = flt or CompiledFilter()
        include = (["documents"] if texts else []) + ["metadatas"]
        include += ["embeddings"] if embeddings else []
        if ids is not None and not ids:
            return []
        if len(parts := _parts(flt, limit, offset)) > 1:
            return [
                r for part in parts for r in self.get(ids, part, embeddings=embeddings, texts=texts)
            ]
        if ids is not None and len(ids) > self.max_batch:
            return [
                r
                for part in _batches(ids, self.max_batch)
                for r in self.get(part, flt, embeddings=embeddings, texts=texts)
            ]
        if ids is None and limit is None:
            pages = self.pages(flt, self.read_page, embeddings, offset or 0, texts=texts)
            return [r for page in pages for r in page]
        with chroma_errors():
            got = self._col.get(
                ids=list(ids) if ids is not None else None,
                where=flt.where,
                where_document=flt.where_document,
                limit=limit,
                offset=offset,
                include=include,
            )
        self.answered_at = time.monotonic()
        vectors = got.get("embeddings") if embeddings else None
        return [
            Record(
                id=rid,
                text=(got["documents"][i] or "") if texts else "",
                metadata=dict(got["metadatas"][i] or {}),
                embedding=vectors[i] if vectors is not None else None,
            )
            for i, rid in enumerate(got["ids"])
        ]

    def pages(
        self,
        flt: CompiledFilter | None = None,
        size: int = 1000,
        embeddings: bool = False,
        offset: int = 0,
        *,
        texts: bool = True,
    ) -> Iterator[list[Record]]:
        """Every record matching the filter (after the first `offset`), in storage order,
        `size` at a time. On a Chroma server the matching ids are listed first, in one read,
        and their records read by id: other hosts write meanwhile, and one's delete among
        pages read by offset moved the later records back, past the next page's start, so
        records no one touched were left out (of a new host's copies, of a delete by filter)."""
        if self.mode == "server":
            ids = self.ids(flt)[offset:]
            for start in range(0, len(ids), size):
                listed = ids[start : start + size]
                if batch := self.get(listed, flt, embeddings=embeddings, texts=texts):
                    yield batch  # none: deleted since they were listed
            return
        if len(parts := _parts(flt or CompiledFilter(), None, offset)) > 1:
            for part in parts:
                yield from self.pages(part, size, embeddings, texts=texts)
            return
        while batch := self.get(
            flt=flt, limit=size, offset=offset, embeddings=embeddings, texts=texts
        ):
            yield batch
            offset += len(batch)

    def nearest_ids(self, vectors: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """For each query vector, up to n (record id, cosine score) pairs, best first: the
        cheapest question to ask Chroma (no SQLite reads of metadata or texts). Concurrent
        callers share Chroma queries (one per distinct n), so sixteen searches cost one trip
        into Chroma and back, not sixteen."""
        if not len(vectors):
            return []
        return list(self._nearest([(vector, n) for vector in vectors]))

    def _nearest_batch(self, items: Sequence[tuple[np.ndarray, int]]) -> list[Any]:
        answers: list[Any] = [None] * len(items)
        for n in dict.fromkeys(n for _, n in items):
            at = [i for i, (_, wanted) in enumerate(items) if wanted == n]
            vectors = np.stack([items[i][0] for i in at])
            with chroma_errors():
                got = self._col.query(query_embeddings=vectors, n_results=n, include=["distances"])
            for i, ids, dists in zip(at, got["ids"], got["distances"], strict=True):
                answers[i] = [
                    (rid, cosine_of_distance(d)) for rid, d in zip(ids, dists, strict=True)
                ]
        return answers

    def nearest(
        self, vectors: np.ndarray, n: int, flt: CompiledFilter | None = None, *, texts: bool = True
    ) -> list[list[tuple[Record, float]]]:
        """For each query vector, up to n (record, cosine score) pairs, best first; without
        `texts` the records' texts are left empty (cheaper). A where-clause listing more
        document ids than one statement binds is asked in parts, their answers merged."""
        flt = flt or CompiledFilter()
        parts = [
            self._query(vectors, n, where, flt.where_document, texts)
            for where in split_id_lists(flt.where)
        ]
        if len(parts) == 1:
            return parts[0]
        return [
            sorted((pair for part in parts for pair in part[q]), key=lambda p: -p[1])[:n]
            for q in range(len(vectors))
        ]

    def _query(
        self,
        vectors: np.ndarray,
        n: int,
        where: dict[str, Any] | None,
        where_document: dict[str, Any] | None,
        texts: bool,
    ) -> list[list[tuple[Record, float]]]:
        include: list[Any] = ["metadatas", "distances"] + (["documents"] if texts else [])
        results = []
        # Chroma reads the records a call found in one SQLite statement, which binds at most
        # 32,766 values: 17 queries of 2,000 chunks (a widened batch search before the copies
        # load) failed the whole request, "too many SQL variables"
        step = max(1, QUERY_READ_IDS // max(1, n))
        for start in range(0, len(vectors), step):
            with chroma_errors():
                got = self._col.query(
                    query_embeddings=vectors[start : start + step],
                    n_results=n,
                    where=where,
                    where_document=where_document,
                    include=include,
                )
            for q, ids in enumerate(got["ids"]):
                docs = got["documents"][q] if texts else [""] * len(ids)
                metas, dists = got["metadatas"][q], got["distances"][q]
                results.append(
                    [
                        (Record(rid, docs[i] or "", dict(metas[i] or {})), cosine_of_distance(d))
                        for i, (rid, d) in enumerate(zip(ids, dists, strict=True))
                    ]
                )
        return results

    # ------------------------------------------------------------ writes

    def upsert(
        self,
        records: Sequence[Record],
        previous: Sequence[Record] = (),
        new: Set[str] = frozenset(),
        stale: Sequence[str] = (),
        *,
        metadata_only: bool = False,
    ) -> Sequence[Record]:
        """Write records in batches Chroma accepts, then delete the `stale` ids (the chunks a
        shrunk document no longer has), all or nothing; the records as written, their
        decimals as floats Chroma's parse keeps (`records.as_held`: written as given or as
        read back, a PATCH's other keys, a restore, some moved a unit at every write). A
        batch holds whole documents (see `records.whole_documents`): the process killed
        between two calls, no rollback runs.

        `previous` holds the records (with embeddings) this write replaces, the stale ones
        included; if a batch or the delete fails, what the call wrote is removed and
        `previous` is written back. Ids in `new` are known not to be stored (the caller
        checked, under the write lock): they are added, which costs Chroma less than an
        upsert (no lookup of the stored record first). With `metadata_only`, every record is
        stored already with this text and vector (a metadata update): only the metadata is
        sent, as Chroma's update (an upsert of the same vectors made Chroma rebuild each one's
        place in its index: 28 s for 3,660 chunks where this takes 0.2 s; review helper 82).
        """
        held = as_held(records)
        records = _replacing(held, previous)
        fresh = [r for r in records if r.id in new]
        rest = [r for r in records if r.id not in new] if fresh else records
        parts = [(p, True) for p in self._calls(fresh)]
        parts += [(p, False) for p in self._calls(rest)]
        written: list[str] = []
        try:
            for part, add in parts:
                if metadata_only:
                    self._relabel(part)
                else:
                    self._write(part, add)
                written.extend(r.id for r in part)
            self.delete(stale)
        except Exception as exc:
            if written or stale:  # a part of the delete may have gone through
                log.error("write failed after %d records; rolling back", len(written))
                try:
                    self._roll_back(written, previous, records)
                except KBError as failed:  # the store is still away: nothing undone
                    said = exc.message if isinstance(exc, KBError) else f"{exc!r}"
                    docs = named(sorted({r.doc_id for r in records}))
                    kind = StoreTimeout if isinstance(exc, StoreTimeout) else StoreUnavailable
                    raise kind(
                        f"the write failed ({said}) after {len(written)} of {len(records)} "
                        f"records, and so did its rollback ({failed.message}): document(s) "
                        f"{docs} may be damaged until written again (GET answers 409 for one "
                        "that is)"
                    ) from exc
            raise
        return held

    def _roll_back(
        self, written: Sequence[str], previous: Sequence[Record], records: Sequence[Record]
    ) -> None:
        """Write `previous` back over what a failed write left, then delete the written ids
        that were not stored before. The replaced records are restored by an upsert (with
        the keys the failed write added nulled out), not deleted and added again: a delete
        that is failing, as when the stale chunks' delete failed, cannot block the restore."""
        for part in self._calls(_replacing(as_held(previous), records)):
            self._write(part)
        before = {r.id for r in previous}
        self.delete([rid for rid in written if rid not in before])

    def _calls(self, records: Sequence[Record]) -> list[list[Record]]:
        """Records in parts of whole documents, one write call each (`whole_documents`)."""
        if not self.call_bytes:
            return whole_documents(records, self.max_batch, _record_id)
        return whole_documents(records, self.max_batch, _record_id, _payload, self.call_bytes)

    def _write(self, records: Sequence[Record], add: bool = False) -> None:
        chroma_write(
            self._col.add if add else self._col.upsert,
            ids=[r.id for r in records],
            documents=[r.text for r in records],
            metadatas=[r.metadata for r in records],
            embeddings=np.asarray([r.embedding for r in records], dtype=np.float32),
        )

    def _relabel(self, records: Sequence[Record]) -> None:
        """Write these records' metadata only (Chroma's update merges it, null removing a
        key, as upsert does); their texts and vectors are stored already."""
        chroma_write(
            self._col.update, ids=[r.id for r in records], metadatas=[r.metadata for r in records]
        )

    def delete(self, ids: Sequence[str]) -> None:
        for part in _batches(ids, self.max_batch):
            chroma_write(self._col.delete, ids=list(part))


def _payload(record: Record) -> int:
    """About the bytes a record adds to a write request to a Chroma server."""
    vector = 0 if record.embedding is None else len(record.embedding) * VECTOR_BYTES_PER_DIM
    text = len(record.text) if record.text.isascii() else len(record.text.encode("utf-8"))
    return len(record.id) + text + len(orjson.dumps(record.metadata)) + vector


def split_id_lists(where: dict[str, Any] | None) -> list[dict[str, Any] | None]:
    """`where` as where-clauses whose matches together are its matches, each listing at most
    ID_LIST_CAP document ids: a text filter decided per document (kb.document_filter) lists
    the passing documents, on a large store more than one SQLite statement binds."""
    if where is None:
        return [None]
    clauses = where["$and"] if set(where) == {"$and"} else [where]
    for i, clause in enumerate(clauses):
        listed = clause.get(DOC)
        ids = listed.get("$in") if len(clause) == 1 and isinstance(listed, dict) else None
        if ids is not None and len(ids) > ID_LIST_CAP:
            rest = clauses[:i] + clauses[i + 1 :]
            return [
                and_where(*rest, {DOC: {"$in": ids[at : at + ID_LIST_CAP]}})
                for at in range(0, len(ids), ID_LIST_CAP)
            ]
    return [where]


def _parts(flt: CompiledFilter, limit: int | None, offset: int | None) -> list[CompiledFilter]:
    """The filter as `split_id_lists` parts, for a read that asks each and joins the answers
    (every filtered read does: a where-clause listing more ids than SQLite binds was a 503).
    A page (limit, offset) of a filter in parts has no order to take it from: refused."""
    wheres = split_id_lists(flt.where)
    if len(wheres) > 1 and (limit is not None or offset):
        raise ValueError("a page of a where-clause listing more ids than one statement binds")
    return [CompiledFilter(where, flt.where_document) for where in wheres]


def _close_client(client: Any) -> None:
    """Close a Chroma client, and the HTTP connections of a server's client and of its admin
    client, which chromadb 1.5.9 leaves open when it stops them."""
    client.close()
    for owner in (client, getattr(client, "_admin_client", None)):
        session = getattr(getattr(owner, "_server", None), "_session", None)
        if session is not None:
            session.close()


def _replacing(records: Sequence[Record], previous: Sequence[Record]) -> list[Record]:
    """Chroma's upsert merges metadata; null out the keys a replaced record no longer has."""
    old_keys = {r.id: r.metadata.keys() for r in previous}
    out = []
    for record in records:
        gone = old_keys.get(record.id, set()) - record.metadata.keys()
        meta = {**record.metadata, **dict.fromkeys(gone)} if gone else record.metadata
        out.append(Record(record.id, record.text, meta, record.embedding))
    return out


def _model_metadata(embedder: Embedder) -> dict[str, Any]:
    return {MODEL_KEY: embedder.name, DIM_KEY: embedder.dim, FINGERPRINT_KEY: embedder.fingerprint}


def _record_id(record: Record) -> str:
    return record.id


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
