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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from kb import __version__
from kb.errors import Conflict, ModelMismatch, ValidationFailed
from kb.records import Record
from kb.store import KnowledgeStore

FORMAT = "kb-backup/1"
CALIBRATED_KEY = "kb_min_score"  # kb.search's key: copied over with the records
PAGE = 2000


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
    """The header of a complete, readable backup; raises on a truncated or foreign file."""
    with _lines(path) as lines:
        header = _header(next(lines, None), path)
        count = sum(1 for _ in lines)
    if count != header["records"]:
        raise ValidationFailed(f"{path}: holds {count} of {header['records']} records")
    return header


def restore(store: KnowledgeStore, path: Path, *, replace: bool = False) -> int:
    """Load a backup into the store's collection, which must be empty (or `replace`)."""
    header = verify(path)
    if header["fingerprint"] != store.embedder.fingerprint or header["dim"] != store.embedder.dim:
        raise ModelMismatch(
            f"{path} holds vectors of {header['model']} (fingerprint {header['fingerprint']}); "
            f"the configured model is {store.embedder.name} ({store.embedder.fingerprint})"
        )
    with store.writes():
        if store.records.count() and not replace:
            raise Conflict(
                f"collection '{store.records.name}' is not empty; restore into an empty one "
                "or pass --replace to delete what it holds first"
            )
        if replace:
            store.clear()
        with _lines(path) as lines:
            next(lines)
            batch: list[Record] = []
            for line in lines:
                batch.append(_record(line))
                if len(batch) >= PAGE:
                    store.restore_records(batch)
                    batch = []
            store.restore_records(batch)
        if isinstance(header.get("min_score"), int | float):
            store.records.set_settings_value(CALIBRATED_KEY, header["min_score"])
    return int(header["records"])


def _line(record: Record) -> dict[str, Any]:
    vector = np.asarray(record.embedding, dtype="<f4").tobytes()
    return {
        "id": record.id,
        "text": record.text,
        "metadata": record.metadata,
        "vector": base64.b64encode(vector).decode("ascii"),
    }


def _record(line: str) -> Record:
    raw = json.loads(line)
    vector = np.frombuffer(base64.b64decode(raw["vector"]), dtype="<f4")
    return Record(raw["id"], raw["text"], raw["metadata"], vector)


def _header(line: str | None, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(line or "")
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValidationFailed(f"{path} is not a kb backup ({FORMAT})")
    return header


@contextmanager
def _lines(path: Path) -> Iterator[Iterator[str]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield (line for line in handle if line.strip())
    except (OSError, EOFError) as exc:  # not gzip, or cut off
        raise ValidationFailed(f"{path} is not a readable kb backup: {exc}") from exc
