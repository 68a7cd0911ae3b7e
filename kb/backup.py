"""Backups: a consistent, self-describing copy of a collection, and its restore.

A backup is gzip-compressed JSON lines: a header (format, model, counts, the calibrated
threshold) and then every Chroma record as stored (id, text, metadata, vector), so a restore
needs no encoder run and reproduces chunks, hashes and date twins exactly. It is written while
the store's write lock is held, so no write lands half inside it; reads go on meanwhile.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from kb import __version__, json_input
from kb.errors import Conflict, ModelMismatch, ValidationFailed
from kb.records import CHUNK, CHUNKS, DOC, Record, chunk_id
from kb.schemas import check_metadata_value
from kb.store import KnowledgeStore

FORMAT = "kb-backup/1"
CALIBRATED_KEY = "kb_min_score"  # kb.search's key: copied over with the records
PAGE = 2000
RECORD_KEYS = ("id", "text", "metadata", "vector")
HEADER_KEYS = {"model": str, "dim": int, "fingerprint": str, "records": int}


def dump(store: KnowledgeStore, out: IO[bytes]) -> int:
    """Write the whole collection to `out` (gzip JSONL); the number of records."""
    with store.writes(), gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as zipped:
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


def write_file(store: KnowledgeStore, dest: Path) -> int:
    """Back up to `dest` atomically (a partial file never carries the final name)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with partial.open("wb") as out:
        count = dump(store, out)
    partial.replace(dest)
    return count


def save_stream(stream: IO[bytes], dest: Path) -> dict[str, Any]:
    """Store a backup received over HTTP at `dest`, checked whole; its header."""
    partial = dest.with_name(dest.name + ".partial")
    with partial.open("wb") as out:
        shutil.copyfileobj(stream, out)
    header = verify(partial)
    partial.replace(dest)
    return header


def verify(path: Path) -> dict[str, Any]:
    """The header of a complete backup whose every record line is well-formed; raises
    ValidationFailed naming the first bad line (truncated, foreign, missing a key, a vector
    of another length than the header's dim, a repeated id)."""
    return _verified(path)[0]


def _verified(path: Path) -> tuple[dict[str, Any], set[int]]:
    """`verify`, and the numbers of the lines holding first chunks (restore writes them
    last). One streaming pass: only the ids are kept (to find repeats), not the records."""
    with _lines(path) as lines:
        first = next(lines, None)
        header = _header(first[1] if first else None, path)
        seen: set[str] = set()
        heads: set[int] = set()
        for number, line in lines:
            record = _record(line, header["dim"], f"{path}:{number}")
            if record.id in seen:
                raise ValidationFailed(f"{path}:{number}: id '{record.id}' appears twice")
            seen.add(record.id)
            if record.chunk == 0:
                heads.add(number)
    if len(seen) != header["records"]:
        raise ValidationFailed(f"{path}: holds {len(seen)} of {header['records']} records")
    return header, heads


def restore(store: KnowledgeStore, path: Path, *, replace: bool = False) -> int:
    """Load a backup into the store's collection, which must be empty (or `replace`).

    The whole file is checked first (model, then every line): --replace deletes the
    collection's records only once the backup is known to load, so a bad file changes
    nothing. The file is then read twice more as it is written, later chunks, then first
    chunks, each line parsed in the pass that writes it, rather than held in memory (a
    backup can be larger than memory)."""
    _check_model(_read_header(path), store, path)
    _check_empty(store, replace)  # before the long check; again under the lock below
    header, heads = _verified(path)
    with store.writes():
        _check_empty(store, replace)
        with store.replica.restoring():
            if replace:
                store.clear()
            # every later chunk first, then the first chunks: killed part-way, the store
            # holds whole documents and chunks without a first chunk, which kb.repair removes
            # when it next opens (pages of the file's order split documents: first chunks
            # were left counting chunks never written)
            for firsts in (False, True):  # each pass parses only the lines it writes
                with _lines(path) as lines:
                    next(lines)
                    batch: list[Record] = []
                    for number, line in lines:
                        if (number in heads) is firsts:
                            batch.append(_record(line, header["dim"], f"{path}:{number}"))
                        if len(batch) >= PAGE:
                            store.restore_records(batch)
                            batch = []
                    store.restore_records(batch)
            if isinstance(header.get("min_score"), int | float):
                store.records.set_settings_value(CALIBRATED_KEY, header["min_score"])
    return int(header["records"])


def _read_header(path: Path) -> dict[str, Any]:
    with _lines(path) as lines:
        first = next(lines, None)
        return _header(first[1] if first else None, path)


def _check_model(header: dict[str, Any], store: KnowledgeStore, path: Path) -> None:
    if header["fingerprint"] != store.embedder.fingerprint or header["dim"] != store.embedder.dim:
        raise ModelMismatch(
            f"{path} holds vectors of {header['model']} (fingerprint {header['fingerprint']}); "
            f"the configured model is {store.embedder.name} ({store.embedder.fingerprint})"
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
        "metadata": record.metadata,
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
    tie a chunk to its document: the id must be the one they give (kb.records.chunk_id)."""
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    doc, chunk, chunks = metadata.get(DOC), metadata.get(CHUNK), metadata.get(CHUNKS)
    if not isinstance(doc, str) or not _count(chunk) or not _count(chunks):
        return f"metadata must hold {DOC} (a string), {CHUNK} and {CHUNKS} (integers)"
    if chunk_id(doc, chunk) != record_id or chunk >= max(chunks, 1):
        return f"id '{record_id}' is not chunk {chunk} of {chunks} of document '{doc}'"
    for key, value in metadata.items():
        try:
            check_metadata_value(str(key), value)
        except ValueError as exc:
            return str(exc)
    return None


def _count(value: Any) -> bool:
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
    return vector


def _header(line: str | None, path: Path) -> dict[str, Any]:
    try:
        header = json_input.loads(line or "")
    except ValueError:  # not JSON, or JSON kb cannot take
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValidationFailed(f"{path} is not a kb backup ({FORMAT})")
    for key, kind in HEADER_KEYS.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise ValidationFailed(
                f"{path}: the header's {key} is missing or not a {kind.__name__}"
            )
    return header


@contextmanager
def _lines(path: Path) -> Iterator[Iterator[tuple[int, str]]]:
    """The file's non-blank lines with their line numbers (counted from 1, as an editor
    would show them after gunzip)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield ((n, line) for n, line in enumerate(handle, start=1) if line.strip())
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:  # not gzip, cut off
        raise ValidationFailed(f"{path} is not a readable kb backup: {exc}") from exc
