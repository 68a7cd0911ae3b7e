"""Backups: a consistent, self-describing copy of a collection, and its restore.

A backup is gzip-compressed JSON lines: a header (format, model, counts, the calibrated
threshold) and then every Chroma record as stored (id, text, metadata, vector), so a restore
needs no encoder run and reproduces chunks, hashes and date twins exactly. It is written while
the store's write lock is held, so no write lands half inside it; reads go on meanwhile.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeGuard

import numpy as np

from kb import __version__, json_input, staging
from kb.collection import RecordCollection
from kb.errors import Conflict, KBError, ModelMismatch, ValidationFailed
from kb.files import replacing
from kb.records import CHUNK, CHUNKS, DOC, HASH, Record, chunk_id
from kb.schemas import (
    CHROMA_METADATA_ENTRIES,
    MAX_SCORE,
    MIN_SCORE,
    RESERVED_PREFIX,
    check_metadata_key,
    check_metadata_value,
    check_stored_id,
    metadata_entries,
)
from kb.search import CALIBRATED_KEY  # copied over with the records
from kb.staging import SwitchUnfinished, signals_held
from kb.store import KnowledgeStore

FORMAT = "kb-backup/1"
PAGE = 2000
BLOCK = 1 << 20  # bytes read at a time from a service's backup stream
RECORD_KEYS = ("id", "text", "metadata", "vector")
HEADER_KEYS = {"model": str, "dim": int, "fingerprint": str, "records": int}
# How far a vector's length may be from 1: every backend's vectors (onnx, onnx-int8,
# openvino-bf16, torch) were within 5e-7 of it here; a norm rounded to bf16 (hardware that
# runs the normalization in bf16) could put one up to 4e-3 off.
# Vectors of 0 or 1e30 in every component were restored, and scored 1.0 for every query.
NORM_TOLERANCE = 1e-2


def dump(store: KnowledgeStore, out: IO[bytes]) -> int:
    """Write the whole collection to `out` (gzip JSONL); the number of records."""
    # no name in the header (a file's was its temporary one, DEST.PID.partial), no time: two
    # backups of one state are the same bytes
    with store.writes(), gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as zipped:
        header = {
            "format": FORMAT,
            "kb": __version__,
            "collection": store.records.name,
            "model": store.embedder.name,
            "dim": store.embedder.dim,
            "fingerprint": store.embedder.fingerprint,
            "records": store.records.count(),
            "documents": store.count(),
            "min_score": store.records.settings_value(CALIBRATED_KEY),
        }
        zipped.write((json.dumps(header) + "\n").encode())
        written = 0
        for page in store.records.pages(size=PAGE, embeddings=True):
            for record in page:
                zipped.write((json.dumps(_line(record), ensure_ascii=False) + "\n").encode())
            written += len(page)
    if written != header["records"]:  # cannot happen under the lock; never ship a torn copy
        raise Conflict(f"the store changed during the backup ({written} of {header['records']})")
    return written


def snapshot(store: KnowledgeStore) -> IO[bytes]:
    """A finished backup in a temporary file, rewound (the caller closes it): the write lock
    is held only while it is written, not while it is sent."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the caller, who closes it)
    try:
        dump(store, spool)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


STDOUT = "standard output"  # what a backup to "-" is said to go to


class RestoreInterrupted(KeyboardInterrupt):
    """A Ctrl-C during a restore; `changed`: whether the collection had been changed by then
    (cleared by --replace, or records written): it then holds part of the backup. `beside`:
    records were written beside it (kb.staging), which its next open removes; `switched`:
    they were in the store's place already (its next open removes the replaced ones)."""

    def __init__(self, changed: bool, beside: bool = False, switched: bool = False) -> None:
        super().__init__()
        self.changed = changed
        self.beside = beside
        self.switched = switched  # the restored records took the store's place already


class RestoreFailed(KBError):
    """A store error (a full disk, a Chroma server gone) once a restore had changed the
    collection (cleared by --replace, or records written): it holds part of the backup.
    Its message is the store's error."""

    def __init__(self, error: KBError) -> None:
        super().__init__(error.message, code=error.code, status=error.status)


def write_file(store: KnowledgeStore, dest: Path | IO[bytes]) -> int:
    """Back up to the file `dest` atomically (a partial file never carries the final name),
    or to the stream `dest` (standard output) as the backup is taken."""
    if not isinstance(dest, Path):
        try:
            return dump(store, dest)
        except OSError as exc:  # a full disk, a closed pipe
            raise _no_stdout(exc) from None
    with replacing(dest, parents=True) as partial, partial.open("wb") as out:
        return dump(store, out)


def save_stream(
    stream: IO[bytes], dest: Path | IO[bytes], shown: str = "the backup received"
) -> dict[str, Any]:
    """Store a backup received over HTTP in the file `dest`, checked whole; its header. A bad
    one is named `shown` (its temporary file was: "y.gz.27209.partial is not a readable kb
    backup"). To a stream `dest` (standard output) it is written once checked (spooled until
    then)."""
    if not isinstance(dest, Path):
        with tempfile.TemporaryFile() as spool:
            for block in _blocks(stream):
                spool.write(block)
            spool.seek(0)
            header = _verified(spool, shown)[0]
            spool.seek(0)
            try:
                shutil.copyfileobj(spool, dest, BLOCK)
                dest.flush()
            except OSError as exc:
                raise _no_stdout(exc) from None
        return header
    with replacing(dest, parents=True) as partial:
        with partial.open("wb") as out:
            for block in _blocks(stream):
                out.write(block)
        return verify(partial, shown)


def _no_stdout(exc: OSError) -> KBError:
    return KBError(f"cannot write {STDOUT}: {exc.strerror or exc}", code="unwritable")


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's blocks. A read that fails (a timeout, a reset, a response cut short)
    is the sender's failure, not the destination's: it must not read as `cannot write`."""
    while True:
        try:
            block = stream.read(BLOCK)
        except (OSError, http.client.HTTPException) as exc:
            problem = str(exc) or type(exc).__name__
            raise KBError(f"the backup stopped arriving: {problem}", code="unreachable") from exc
        if not block:
            return
        yield block


@contextmanager
def rereadable(path: Path) -> Iterator[Path]:
    """`path` as a file `restore` can read more than once (its checks, then its two write
    passes): a pipe, a FIFO or /dev/stdin is copied to a temporary file first (read again, a
    pipe was empty, "not a gzipped file"; a FIFO's second open waited for ever)."""
    if path.is_file():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kb-restore-") as folder:
        copy = Path(folder) / "backup.jsonl.gz"
        try:
            with path.open("rb") as incoming, copy.open("wb") as out:
                shutil.copyfileobj(incoming, out, BLOCK)
        except OSError as exc:
            raise KBError(
                f"cannot copy {path} to a temporary file: {exc.strerror or exc}", status=500
            ) from exc
        yield copy


def verify(path: Path, shown: str | None = None) -> dict[str, Any]:
    """The header of a complete backup whose every record line is well-formed; raises
    ValidationFailed naming the first bad line (truncated, foreign, missing a key, a vector
    of another length than the header's dim, a repeated id) of `path`, or of `shown`."""
    return _verified(path, shown)[0]


def _verified(
    source: Path | IO[bytes], shown: str | None = None
) -> tuple[dict[str, Any], set[int]]:
    """`verify`, and the numbers of the lines holding first chunks (restore writes them
    last). One streaming pass: only the ids (to find repeats) and what ties chunks to their
    documents (`_Documents`) are kept, not the records."""
    path = shown or str(source)  # as messages name it
    with _lines(source, path) as lines:
        header = _header(next(lines, None), path)
        seen: set[str] = set()
        documents = _Documents()
        for number, line in lines:
            record = _record(line, header["dim"], f"{path}:{number}")
            if record.id in seen:
                raise ValidationFailed(f"{path}:{number}: id '{record.id}' appears twice")
            seen.add(record.id)
            documents.see(record, number)
    if len(seen) != header["records"]:
        raise ValidationFailed(f"{path}: holds {len(seen)} of {header['records']} records")
    documents.check(path)
    return header, set(documents.heads)


class _Documents:
    """What ties a backup's chunks to their documents: each first chunk's line, chunk count
    and version (content hash), and each later chunk's index and version."""

    def __init__(self) -> None:
        self.heads: dict[int, tuple[str, int, object]] = {}  # line -> document, count, version
        self._later: dict[str, list[tuple[int, object]]] = {}  # document -> index, version

    def see(self, record: Record, number: int) -> None:
        version = record.metadata.get(HASH)
        if record.chunk == 0:
            self.heads[number] = (record.doc_id, int(record.metadata[CHUNKS]), version)
        else:
            self._later.setdefault(record.doc_id, []).append((record.chunk, version))

    def check(self, path: str) -> None:
        """ValidationFailed naming the first chunk (the earliest in the file) whose count
        does not match its chunks: one missing (a line removed, a count raised), or one of
        its version past the count (a count lowered). Both were restored: the document's
        text then lacked chunks. Chunks of another version past the count are what a killed
        write leaves (kb.repair): restored as held, as are chunks of no first chunk."""
        for number, (doc, count, version) in sorted(self.heads.items()):
            later = self._later.get(doc, [])
            counted = {index for index, _ in later if index < count}
            extra = [index for index, held in later if index >= count and held == version]
            if len(counted) == count - 1 and not extra:
                continue
            where = f"{path}:{number}: document '{doc}' counts {count} chunks ({CHUNKS}), "
            if len(counted) < count - 1:  # a count of 10**12 is not a set of that many
                missing = next(i for i in range(1, count) if i not in counted)
                raise ValidationFailed(f"{where}but the file holds no chunk {missing}")
            raise ValidationFailed(f"{where}but the file holds its chunk {min(extra)} too")


def restore(
    store: KnowledgeStore, path: Path, *, replace: bool = False, shown: str | None = None
) -> int:
    """Load a backup into the store's collection, which must be empty (or `replace`).

    The whole file is checked first (model, then every line): --replace deletes the
    collection's records only once the backup is known to load, so a bad file changes
    nothing. The file is then read twice more as it is written, later chunks, then first
    chunks, each line parsed in the pass that writes it, rather than held in memory (a
    backup can be larger than memory): `path` must be a file that can be read again (a
    pipe's copy, named `shown` in messages)."""
    name = shown or str(path)
    _check_model(read_header(path, name), store, name)
    _check_empty(store, replace)  # before the long check; again under the lock below
    header, heads = _verified(path, name)
    changed = switched = False
    staged: RecordCollection | None = None
    try:
        with store.writes():
            _check_empty(store, replace)
            staged = store.staging() if replace else None
            if staged is None:
                changed = True
                _write_in_place(store, path, header, heads, replace, name)
            else:
                _fill(store, staged, path, header, heads, name)
                with signals_held():  # a Ctrl-C in the switch comes after it, said so
                    replaced = _switch(store, staged)
                    switched = True
                store.settle_switch(replaced)
    except KeyboardInterrupt as exc:  # a Ctrl-C: what it left is the caller's to say
        raise RestoreInterrupted(changed, staged is not None, switched) from exc
    except KBError as exc:  # the caller says the collection is partial, as for a Ctrl-C
        if changed:
            raise RestoreFailed(exc) from exc
        raise
    return int(header["records"])


def _write_in_place(
    store: KnowledgeStore,
    path: Path,
    header: dict[str, Any],
    heads: set[int],
    replace: bool,
    name: str,
) -> None:
    """restore's writes into the store's collection (empty, or emptied by `replace`: on a
    Chroma server), under the store's write lock."""
    with store.replica.restoring():
        if replace:
            store.clear()
        _write_records(store.restore_records, path, header, heads, name)
        _restore_threshold(store, header["min_score"])


def _fill(
    store: KnowledgeStore,
    staged: RecordCollection,
    path: Path,
    header: dict[str, Any],
    heads: set[int],
    name: str,
) -> None:
    """restore --replace's writes into the collection beside the store's that takes its
    place once whole (kb.staging). A store error part-way removes it: the store is as it
    was. (After a Ctrl-C the store's next open removes it: a second Ctrl-C would not wait.)"""
    try:
        _write_records(partial(_add_to, staged), path, header, heads, name)
        staged.set_settings_value(CALIBRATED_KEY, _threshold(header["min_score"]))
    except KBError as exc:
        staging.retire(staged)  # the store still failing: its next open removes it
        raise exc.extended(f"collection '{store.records.name}' keeps what it held") from exc


def _add_to(staged: RecordCollection, records: list[Record]) -> None:
    """Write records exactly as a backup holds them into the collection `staging` gave,
    which nothing else reads or writes: no write lock, no copies to update, every id new (a
    backup holds each once)."""
    if records:
        staged.upsert(records, new={record.id for record in records})


def _switch(store: KnowledgeStore, staged: RecordCollection) -> RecordCollection:
    """The filled collection in the store's place; the replaced one. A store error in the
    renames puts the names back (or is staging.SwitchUnfinished when that fails too)."""
    try:
        return store.switch_to(staged)
    except SwitchUnfinished:
        raise
    except KBError as exc:
        raise exc.extended(f"collection '{store.records.name}' keeps what it held") from exc


def _write_records(
    write: Callable[[list[Record]], None],
    path: Path,
    header: dict[str, Any],
    heads: set[int],
    name: str,
) -> None:
    # every later chunk first, then the first chunks: killed part-way, the store holds
    # whole documents and chunks without a first chunk, which kb.repair removes when it
    # next opens (pages of the file's order split documents: first chunks were left
    # counting chunks never written)
    for firsts in (False, True):  # each pass parses only the lines it writes
        with _lines(path, name) as lines:
            next(lines)
            batch: list[Record] = []
            for number, line in lines:
                if (number in heads) is firsts:
                    batch.append(_record(line, header["dim"], f"{name}:{number}"))
                if len(batch) >= PAGE:
                    write(batch)
                    batch = []
            write(batch)


def _restore_threshold(store: KnowledgeStore, min_score: float | None) -> None:
    """The collection's calibrated threshold becomes the backup's, cleared when it had none:
    a threshold calibrated for what the collection held before must not filter the restored
    documents (None removes the key from the collection's metadata)."""
    store.set_setting(CALIBRATED_KEY, _threshold(min_score))


def _threshold(min_score: float | None) -> float | None:
    return None if min_score is None else float(min_score)


def read_header(path: Path, shown: str | None = None) -> dict[str, Any]:
    """The backup's header, checked (a file that is not a kb backup is refused), without
    reading further: what a restore checks before it opens (and may create) a store."""
    with _lines(path, shown) as lines:
        return _header(next(lines, None), shown or path)


def _check_model(header: dict[str, Any], store: KnowledgeStore, name: str) -> None:
    embedder = store.embedder
    if header["dim"] != embedder.dim:  # the same fingerprint with another dim: edited
        raise ModelMismatch(
            f"{name} holds vectors of {header['dim']} dimensions; the configured model "
            f"{embedder.name} gives {embedder.dim}"
        )
    if header["fingerprint"] not in (embedder.fingerprint, *embedder.former_fingerprints):
        raise ModelMismatch(
            f"{name} holds vectors of {header['model']} (fingerprint {header['fingerprint']}); "
            f"the configured model is {embedder.name} ({embedder.fingerprint})"
        )


def _check_empty(store: KnowledgeStore, replace: bool) -> None:
    if store.records.count() and not replace:
        raise Conflict(
            f"collection '{store.records.name}' is not empty; restore into an empty one "
            "or pass --replace to delete what it holds first"
        )


def _line(record: Record) -> dict[str, Any]:
    vector = np.asarray(record.embedding, dtype="<f4").tobytes()
    return {
        "id": record.id,
        "text": record.text,
        # keys sorted: Chroma gives them in another order at each read, so two backups of
        # one store differed on every line (fixer helper 96)
        "metadata": dict(sorted(record.metadata.items())),
        "vector": base64.b64encode(vector).decode("ascii"),
    }


def _record(line: str, dim: int, where: str) -> Record:
    """One record line as a Record, or ValidationFailed naming `where` (file:line) and the
    problem: everything the store relies on when it writes the record is checked here, so
    that a restore never stops half-way on a line it could have refused up front."""
    try:
        raw = json_input.line_object(line)  # checked too: no lone surrogate reaches Chroma
    except ValueError as exc:
        raise ValidationFailed(f"{where}: {exc}") from None
    missing = [key for key in RECORD_KEYS if key not in raw]
    if missing:
        raise ValidationFailed(f"{where}: no {', '.join(missing)}")
    record_id, text, metadata = raw["id"], raw["text"], raw["metadata"]
    if not isinstance(record_id, str) or not record_id:
        raise ValidationFailed(f"{where}: id must be a non-empty string")
    if not isinstance(text, str):
        raise ValidationFailed(f"{where}: text must be a string")
    problem = _metadata_problem(record_id, metadata)
    if problem:
        raise ValidationFailed(f"{where}: {problem}")
    return Record(record_id, text, metadata, _vector(raw["vector"], dim, where))


def _metadata_problem(record_id: str, metadata: Any) -> str | None:
    """Why the store could not hold this record's metadata, or None. The internal fields
    tie a chunk to its document: the id must be the one they give (kb.records.chunk_id),
    the document's id one /add takes, and every other key one /add takes (Chroma refused
    "" and "$and" part-way through a --replace; " " was restored, and the export of the
    store then did not load back)."""
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    doc, chunk, chunks = metadata.get(DOC), metadata.get(CHUNK), metadata.get(CHUNKS)
    if not isinstance(doc, str) or not _count(chunk) or not _count(chunks):
        return f"metadata must hold {DOC} (a string), {CHUNK} and {CHUNKS} (integers)"
    if chunk_id(doc, chunk) != record_id or chunk >= max(chunks, 1):
        return f"id '{record_id}' is not chunk {chunk} of {chunks} of document '{doc}'"
    try:
        check_stored_id(doc)
    except ValueError as exc:
        return f"the document's {exc}"
    for key, value in metadata.items():
        try:
            if not key.startswith(RESERVED_PREFIX):  # kb's own fields: written by kb
                check_metadata_key(key)
            check_metadata_value(key, value)
        except ValueError as exc:
            return str(exc)
    if (entries := metadata_entries(metadata)) > CHROMA_METADATA_ENTRIES:  # kb.schemas: why
        return f"metadata holds {entries:,} entries; Chroma takes {CHROMA_METADATA_ENTRIES:,}"
    return None


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _vector(value: Any, dim: int, where: str) -> np.ndarray:
    try:
        vector = np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4")
    except (TypeError, ValueError) as exc:  # not a string, not base64, not whole floats
        raise ValidationFailed(f"{where}: vector is not base64 float32 ({exc})") from None
    if vector.shape != (dim,):
        raise ValidationFailed(f"{where}: vector has {vector.size} dimensions, not {dim}")
    if not np.isfinite(vector).all():
        raise ValidationFailed(f"{where}: vector holds a NaN or infinite value")
    length = float(np.linalg.norm(vector.astype(np.float64)))
    if not abs(length - 1) < NORM_TOLERANCE:  # kb's vectors are normalized
        raise ValidationFailed(f"{where}: vector has length {length:.4g}, not 1")
    return vector


def _header(first: tuple[int, str] | None, path: Path | str) -> dict[str, Any]:
    """The header (the first line), checked before anything is written: a value the store
    would take as it is (a threshold of `true` or 5) is refused as `file:line: problem`."""
    number, line = first or (1, "")
    try:
        header = json_input.loads(line)
    except ValueError:  # not JSON, or JSON kb cannot take
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValidationFailed(f"{path} is not a kb backup ({FORMAT})")
    where = f"{path}:{number}: the header's"
    for key, kind in HEADER_KEYS.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise ValidationFailed(f"{where} {key} is missing or not a {kind.__name__}")
    problem = _threshold_problem(header)
    if problem:
        raise ValidationFailed(f"{where} {problem}")
    return header


def _threshold_problem(header: dict[str, Any]) -> str | None:
    """Why the header's min_score, the calibrated threshold a restore gives the collection
    as it is, is not one a query could take (kb.schemas.QueryRequest), or None."""
    if "min_score" not in header:
        return "min_score is missing (null: no calibrated threshold)"
    value, low, high = header["min_score"], MIN_SCORE, MAX_SCORE
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
        return None
    return (
        f"min_score must be null or a number from {low:g} to {high:g}, not {json.dumps(value)[:40]}"
    )


@contextmanager
def _lines(path: Path | IO[bytes], shown: str | None = None) -> Iterator[Iterator[tuple[int, str]]]:
    """The file's non-blank lines with their line numbers (counted from 1, as an editor
    would show them after gunzip); a file that is not one is named `shown`, or its path."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield ((n, line) for n, line in enumerate(handle, start=1) if line.strip())
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:  # not gzip, cut off
        raise ValidationFailed(f"{shown or path} is not a readable kb backup: {exc}") from exc
