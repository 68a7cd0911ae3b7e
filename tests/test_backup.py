"""kb backup and kb restore: a consistent copy of a running store, brought back exactly."""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kb import backup, collection, files, staging
from kb.cli import main
from kb.collection import RecordCollection
from kb.config import Settings, is_kb_variable
from kb.errors import ConfigError, Conflict, KBError, ModelMismatch, ValidationFailed
from kb.filters import compile_filter
from kb.records import CHUNK, CHUNKS, DOC, HASH, chunk_id
from kb.schemas import DocumentIn, QueryRequest, Threshold
from kb.search import CALIBRATED_KEY, resolve_threshold, search
from kb.store import KnowledgeStore
from tests.conftest import COOKING, changed
from tests.live import Service, call

LONG = " ".join(f"Sentence {i} about sourdough, hydration and the crumb." for i in range(120))


def contents(store: KnowledgeStore) -> list[tuple[str, str, object]]:
    return sorted((d.id, d.text, d.metadata) for d in store.iter_documents(compile_filter()))


def top(store: KnowledgeStore, text: str, mode: str) -> list[tuple[str, float]]:
    request = QueryRequest.model_validate({"query": text, "mode": mode, "min_score": -1})
    return [(m.id, round(m.score, 5)) for m in search(store, request)[0].matches]


@pytest.fixture
def filled(settings: Settings, embedder) -> KnowledgeStore:
    store = KnowledgeStore.open(settings, embedder)
    store.add([DocumentIn.model_validate(doc) for doc in COOKING])
    store.add([DocumentIn(id="long", text=LONG, metadata={"tags": []})])
    store.records.set_settings_value(CALIBRATED_KEY, 0.37)
    yield store
    store.close()


def test_backup_and_restore_reproduce_the_store(filled, tmp_path: Path, embedder) -> None:
    dest = tmp_path / "copy.jsonl.gz"
    assert backup.write_file(filled, dest) == filled.records.count()
    assert filled.get("long").chunks > 1
    target = KnowledgeStore.open(Settings(chroma_path=tmp_path / "other"), embedder)
    try:
        assert backup.restore(target, dest) == filled.records.count()
        assert contents(target) == contents(filled)
        for mode in ("dense", "keyword", "hybrid"):
            assert top(target, "crumb hydration", mode) == top(filled, "crumb hydration", mode)
        assert target.records.settings_value(CALIBRATED_KEY) == 0.37
        with pytest.raises(Conflict, match="not empty"):
            backup.restore(target, dest)
        target.add([DocumentIn(id="extra", text="Something restore must remove")])
        backup.restore(target, dest, replace=True)
        assert contents(target) == contents(filled)
    finally:
        target.close()


def test_a_backups_gzip_header_names_no_file(filled, tmp_path: Path) -> None:
    """The gzip header carried the temporary file's name (`a.gz.PID.partial`, what `gunzip -N`
    restored it as, and two backups' headers differed though mtime=0 was set)."""
    first, second = tmp_path / "a.gz", tmp_path / "b.gz"
    backup.write_file(filled, first)
    backup.write_file(filled, second)
    head = first.read_bytes()[:10]  # magic, method, flags, mtime, extra flags, OS
    assert head[3] & gzip.FNAME == 0  # no file name follows
    assert head[4:8] == bytes(4)  # mtime 0
    assert second.read_bytes()[:10] == head


def test_a_truncated_or_foreign_backup_is_refused(filled, tmp_path: Path) -> None:
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = gzip.decompress(dest.read_bytes()).splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(lines[:-2])))
    with pytest.raises(ValidationFailed, match="holds"):
        backup.verify(cut)
    junk = tmp_path / "junk.jsonl.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(ValidationFailed, match="not a readable kb backup"):
        backup.verify(junk)
    header = json.loads(lines[0]) | {"fingerprint": "0" * 16}
    other = tmp_path / "other-model.jsonl.gz"
    other.write_bytes(gzip.compress(json.dumps(header).encode() + b"\n" + b"".join(lines[1:])))
    with pytest.raises(ModelMismatch):
        backup.restore(filled, other, replace=True)
    assert filled.count() == 5  # nothing was touched


def test_a_backup_an_earlier_kb_wrote_for_the_model_restores(filled, tmp_path: Path) -> None:
    """Its header holds the fingerprint kb recorded before it covered every model file."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = gzip.decompress(dest.read_bytes()).splitlines(keepends=True)
    header = json.loads(lines[0]) | {"fingerprint": filled.embedder.former_fingerprints[0]}
    older = tmp_path / "older.jsonl.gz"
    older.write_bytes(gzip.compress(json.dumps(header).encode() + b"\n" + b"".join(lines[1:])))
    before, records = contents(filled), filled.records.count()
    assert backup.restore(filled, older, replace=True) == records
    assert contents(filled) == before


@contextmanager
def batches_landing(write: Callable[[int], None], at_least: int) -> Iterator[None]:
    """Call write(0), write(1), ... on a thread until the block ends; the block starts once
    `at_least` batches have landed. A failed write fails the test."""
    stop, landed, failed = threading.Event(), [], []

    def writer() -> None:
        n = 0
        try:
            while not stop.is_set():
                write(n)
                landed.append(n)
                n += 1
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(landed) < at_least and thread.is_alive():
            thread.join(0.05)
        if len(landed) >= at_least:
            yield
    finally:
        stop.set()
        thread.join()
    if failed:
        raise failed[0]


def test_backup_of_a_running_service_is_consistent(service: Service, tmp_path: Path) -> None:
    """Batches keep landing while the backup is taken: it holds whole batches only, and
    `kb restore` brings exactly that back."""
    base = service.start().base

    def write(n: int) -> None:
        docs = [{"id": f"w{n}-{i}", "text": f"Batch {n} item {i} on tides"} for i in range(10)]
        assert call(base, "/add", {"documents": docs})[0] == 201

    with batches_landing(write, at_least=3):
        dest = tmp_path / "live.jsonl.gz"
        env = {"KB_CHROMA_PATH": str(tmp_path / "unused")}
        done = CliRunner().invoke(main, ["backup", str(dest), "--url", base], env=env)
        assert done.exit_code == 0, done.output
    header = backup.verify(dest)
    assert header["records"] % 10 == 0
    assert header["records"] >= 30
    restored = tmp_path / "restored"
    env = {"KB_CHROMA_PATH": str(restored)}
    done = CliRunner().invoke(main, ["restore", str(dest)], env=env)
    assert done.exit_code == 0, done.output
    assert f"restored {header['records']} records" in done.output
    copy = Service(restored, tmp_path / "copy.log").start()
    try:
        ids = {d["id"] for d in call(copy.base, "/documents?limit=1000")[1]["documents"]}
        batches = {rid.split("-")[0] for rid in ids}
        assert len(ids) == header["records"] == 10 * len(batches)
    finally:
        copy.stop()


def test_backup_without_url_of_a_store_in_use_says_what_to_do(live_server: str, service) -> None:
    env = {"KB_CHROMA_PATH": str(service.store)}
    done = CliRunner().invoke(main, ["backup", str(service.store.parent / "x.gz")], env=env)
    assert done.exit_code == 1
    assert "kb backup --url" in done.output


def test_a_backup_taken_during_writes_holds_whole_writes(
    settings: Settings, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small pages make the copy span many reads while batches land between them."""
    monkeypatch.setattr(backup, "PAGE", 3)
    store = KnowledgeStore.open(settings, embedder)

    def write(n: int) -> None:
        store.add([DocumentIn(id=f"w{n}-{i}", text=f"Batch {n} item {i}") for i in range(7)])

    try:
        with batches_landing(write, at_least=2):
            dest = tmp_path / "during.jsonl.gz"
            count = backup.write_file(store, dest)
    finally:
        store.close()
    lines = gzip.decompress(dest.read_bytes()).decode().splitlines()[1:]
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == count
    assert count % 7 == 0
    assert count >= 14


def _edit(lines: list[bytes], number: int, change: Callable[[dict], object]) -> list[bytes]:
    """The backup's lines with line `number` (1-based) replaced by change(its record)."""
    record = json.loads(lines[number - 1])
    changed = change(record)
    text = changed if isinstance(changed, bytes) else json.dumps(changed).encode() + b"\n"
    return [*lines[: number - 1], text, *lines[number:]]


def _with_key(key: str) -> Callable[[dict], dict]:
    return lambda r: r | {"metadata": r["metadata"] | {key: "x"}}


def _renamed(record: dict, doc: str) -> dict:
    """The record as a chunk of document `doc` (its id and internal fields agreeing)."""
    metadata = record["metadata"] | {DOC: doc}
    return record | {"id": chunk_id(doc, metadata[CHUNK]), "metadata": metadata}


def _vector(record: dict, value: float) -> str:
    """A vector of the record's length holding `value` in every component, as a backup holds
    one."""
    dim = len(base64.b64decode(record["vector"])) // 4
    return base64.b64encode(np.full(dim, value, dtype="<f4").tobytes()).decode()


BAD_LINES = {
    "cut off": lambda r: json.dumps(r).encode()[:60] + b"\n",
    "no vector": lambda r: {k: v for k, v in r.items() if k != "vector"},
    "short vector": lambda r: r | {"vector": base64.b64encode(b"\0" * 16).decode()},
    "not base64": lambda r: r | {"vector": "@@@"},
    "NaN vector": lambda r: r | {"vector": base64.b64encode(b"\0\0\xc0\x7f" * 384).decode()},
    "text a number": lambda r: r | {"text": 7},
    "nested metadata": lambda r: r | {"metadata": r["metadata"] | {"x": {"y": 1}}},
    # Chroma failed such a record's compaction, and every later read and write with it
    "over 5,461 metadata entries": lambda r: (
        r | {"metadata": r["metadata"] | {"x": list(range(5462 - len(r["metadata"]) + 1))}}
    ),
    "id not its chunk": lambda r: r | {"id": r["id"] + "-renamed"},
    "no chunk fields": lambda r: r | {"metadata": {"a": 1}},
    # json.loads takes both; Chroma cannot store the first, json recursed on the second
    "lone surrogate": lambda r: (
        json.dumps(r | {"text": "x"}).encode().replace(b'"x"', b'"\\ud800"') + b"\n"
    ),
    "nested 100k deep": lambda r: b"[" * 100_000 + b"]" * 100_000 + b"\n",
    # keys /add refuses: Chroma refused the first three part-way through a --replace (what
    # the collection held was gone), and took the others, whose export then did not load
    **{f"key {key[:12]!r}": _with_key(key) for key in ["", "$and", "chroma:document"]},
    **{f"key {key[:12]!r}": _with_key(key) for key in [" ", "#document", "k" * 129]},
    "document id ending in a space": lambda r: _renamed(r, r["metadata"][DOC] + " "),
    # restored, a vector of 1e30s scored 1.0 for every query
    "vector of zeros": lambda r: r | {"vector": _vector(r, 0.0)},
    "vector of 1e30s": lambda r: r | {"vector": _vector(r, 1e30)},
    "vector of length 1.02": lambda r: r | {"vector": _vector(r, 1.02 / 384**0.5)},
    "document id with a control character": lambda r: _renamed(r, "a\x01b"),
}


@pytest.mark.parametrize("problem", BAD_LINES)
def test_a_bad_record_line_is_refused_before_the_store_changes(
    filled, tmp_path: Path, problem: str
) -> None:
    """--replace emptied the store and then stopped on the bad line (JSONDecodeError,
    KeyError): a backup with one bad line lost everything. Now the file is read whole first."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = gzip.decompress(dest.read_bytes()).splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b"".join(_edit(lines, 4, BAD_LINES[problem]))))
    before = contents(filled)
    with pytest.raises(ValidationFailed, match=f"{bad}:4: "):
        backup.restore(filled, bad, replace=True)
    assert contents(filled) == before


def _lines_of(dest: Path) -> list[bytes]:
    return gzip.decompress(dest.read_bytes()).splitlines(keepends=True)


def _counted(lines: list[bytes]) -> list[bytes]:
    """The backup's lines with the header's record count set to what they hold."""
    header = json.loads(lines[0]) | {"records": len(lines) - 1}
    return [json.dumps(header).encode() + b"\n", *lines[1:]]


def _line_of(lines: list[bytes], record_id: str) -> int:
    return next(n for n, line in enumerate(lines, 1) if json.loads(line).get("id") == record_id)


def _set_count(lines: list[bytes], doc: str, change: int) -> list[bytes]:
    number = _line_of(lines, doc)

    def counted(r: dict) -> dict:
        return r | {"metadata": r["metadata"] | {CHUNKS: r["metadata"][CHUNKS] + change}}

    return _edit(lines, number, counted)


CHUNK_DAMAGE = {  # a backup's lines -> the same with one document damaged
    "a chunk line removed": lambda ls: _counted([x for x in ls if b'"long#chunk1"' not in x]),
    "a count raised": lambda ls: _set_count(ls, "long", 1),
    "a count lowered": lambda ls: _set_count(ls, "long", -1),
    "a single chunk counting 3": lambda ls: _set_count(ls, "pasta", 2),
    "a single chunk counting 10**12": lambda ls: _set_count(ls, "pasta", 10**12),
}


@pytest.mark.parametrize("damage", CHUNK_DAMAGE)
def test_a_document_whose_count_does_not_match_its_chunks_is_refused(
    filled, tmp_path: Path, damage: str
) -> None:
    """Restored as it was, such a document lacked part of its text (a chunk of it
    missing, or not counted): now the check names its first chunk's line."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = CHUNK_DAMAGE[damage](_lines_of(dest))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b"".join(lines)))
    doc = "pasta" if "single" in damage else "long"
    before = contents(filled)
    with pytest.raises(ValidationFailed, match=rf"{bad}:{_line_of(lines, doc)}: document '{doc}'"):
        backup.restore(filled, bad, replace=True)
    assert contents(filled) == before


def test_what_a_killed_write_leaves_is_restored_as_held(filled, tmp_path: Path) -> None:
    """A chunk of another version past its document's count (an interrupted shortening's
    tail, which kb.repair knows) is in a backup of a store holding one: it restores."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = _lines_of(dest)
    count = filled.get("long").chunks
    tail = json.loads(lines[_line_of(lines, f"long#chunk{count - 1}") - 1])
    old = tail["metadata"] | {CHUNK: count, CHUNKS: count + 1, HASH: "an older version"}
    tail |= {"id": f"long#chunk{count}", "metadata": old}
    held = tmp_path / "held.jsonl.gz"
    held.write_bytes(gzip.compress(b"".join(_counted([*lines, json.dumps(tail).encode()]))))
    assert backup.restore(filled, held, replace=True) == len(lines)


def test_a_repeated_id_is_refused_and_an_empty_store_stays_empty(
    filled, tmp_path: Path, embedder
) -> None:
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = gzip.decompress(dest.read_bytes()).splitlines(keepends=True)
    header = json.loads(lines[0])
    twice = [json.dumps(header | {"records": header["records"] + 1}).encode() + b"\n"]
    bad = tmp_path / "twice.jsonl.gz"
    bad.write_bytes(gzip.compress(b"".join([*twice, *lines[1:], lines[2]])))
    target = KnowledgeStore.open(Settings(chroma_path=tmp_path / "other"), embedder)
    try:
        with pytest.raises(ValidationFailed, match=f"{bad}:{len(lines) + 1}: id .* twice"):
            backup.restore(target, bad)
        assert target.records.count() == 0  # nothing half-restored
    finally:
        target.close()


def test_kb_restore_of_a_bad_backup_names_the_line_and_keeps_the_store(
    filled, tmp_path: Path, settings: Settings
) -> None:
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    lines = gzip.decompress(dest.read_bytes()).splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b"".join([*lines[:-1], lines[-1][:50]])))
    filled.close()
    assert f"restore failed: {bad}:{len(lines)}: not valid JSON" in _restore_fails(settings, bad)
    store = KnowledgeStore.open(settings, filled.embedder)
    try:
        assert store.count() == 5
    finally:
        store.close()


def _restore_fails(settings: Settings, bad: Path) -> str:
    """What `kb restore BAD --replace` says: it exits 1 with a message, not a traceback."""
    env = {"KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": settings.collection}
    done = CliRunner().invoke(main, ["restore", str(bad), "--replace"], env=env)
    assert done.exit_code == 1
    assert isinstance(done.exception, SystemExit)
    return done.output


@pytest.mark.parametrize("through", ["pipe", "fifo"])
def test_kb_restore_reads_a_backup_from_a_pipe_or_fifo(
    filled, tmp_path: Path, settings: Settings, through: str
) -> None:
    """A restore reads its file several times (checks, two write passes): from a pipe
    (`ssh host cat kb.gz | kb restore /dev/stdin`) it said "not a readable kb backup: Not a
    gzipped file" and had created the store; from a FIFO it waited for ever (review helper
    63). Such a file is copied first, and messages still name it."""
    dest = tmp_path / "copy.jsonl.gz"
    records = backup.write_file(filled, dest)
    before = contents(filled)
    filled.close()
    env = {k: v for k, v in os.environ.items() if not is_kb_variable(k)}
    env |= {"KB_CHROMA_PATH": str(tmp_path / "restored"), "KB_COLLECTION": settings.collection}
    command = [sys.executable, "-m", "kb", "restore"]
    if through == "pipe":
        done = subprocess.run(
            [*command, "/dev/stdin"], input=dest.read_bytes(), env=env, capture_output=True
        )
    else:
        fifo = tmp_path / "backup.fifo"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_bytes(dest.read_bytes()))
        writer.start()
        done = subprocess.run([*command, str(fifo)], env=env, capture_output=True, timeout=120)
        writer.join()
    assert done.returncode == 0, done.stderr
    assert f"restored {records} records from ".encode() in done.stderr
    restored = KnowledgeStore.open(Settings(**env_settings(env)), filled.embedder)
    try:
        assert contents(restored) == before
    finally:
        restored.close()
    junk = subprocess.run([*command, "/dev/stdin"], input=b"not gzip", env=env, capture_output=True)
    assert junk.returncode == 1
    assert b"restore failed: /dev/stdin is not a readable kb backup" in junk.stderr


def _disk_full_on_the_second_write(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """restore's writes in pages of 2, the second failing as on a full disk; their sizes."""
    monkeypatch.setattr(backup, "PAGE", 2)
    written = RecordCollection.upsert
    calls: list[int] = []

    def disk_full(collection: RecordCollection, records, *args, **kwargs):
        calls.append(len(records))
        if len(calls) == 2:
            raise KBError("the store failed: InternalError: (code: 778) disk I/O error")
        return written(collection, records, *args, **kwargs)

    monkeypatch.setattr(RecordCollection, "upsert", disk_full)
    return calls


DISK_FULL = "restore failed: the store failed: InternalError: (code: 778) disk I/O error; "


def test_a_store_error_part_way_through_a_replace_leaves_an_embedded_store_as_it_was(
    filled, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--replace emptied the collection first, so a full disk part-way lost what it held
    (the message said so, review helper 81): now the backup is written beside it and takes
    its place once whole (kb.staging); a failure removes it, and the store is as it was."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    filled.add([DocumentIn(id="later", text="A pasta sauce written after the backup.")])
    before = contents(filled)
    searched = {mode: top(filled, "pasta sauce", mode) for mode in ("dense", "keyword")}
    assert "later" in {doc_id for doc_id, _ in searched["keyword"]}
    filled.close()
    calls = _disk_full_on_the_second_write(monkeypatch)
    said = _restore_fails(settings, dest)
    assert f"{DISK_FULL}collection '{settings.collection}' keeps what it held" in said
    assert len(calls) == 2
    monkeypatch.undo()
    store = KnowledgeStore.open(settings, filled.embedder)
    try:
        assert contents(store) == before
        assert {mode: top(store, "pasta sauce", mode) for mode in searched} == searched
        assert store.records.collection_names() == {settings.collection}
    finally:
        store.close()


def test_a_store_error_part_way_says_a_servers_collection_is_partial_and_what_to_run(
    server_settings: Settings, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Chroma server the restore writes in place (other processes hold the collection
    by its id): a full disk part-way said only "restore failed: ... disk I/O error"; it now
    says the collection is partial and what to run (review helper 81)."""
    store = KnowledgeStore.open(server_settings, embedder)
    try:
        store.add([DocumentIn.model_validate(doc) for doc in COOKING])
        dest = tmp_path / "copy.jsonl.gz"
        backup.write_file(store, dest)
        before = contents(store)
    finally:
        store.close()
    calls = _disk_full_on_the_second_write(monkeypatch)
    env = {"KB_CHROMA_URL": server_settings.chroma_url, "KB_COLLECTION": server_settings.collection}
    env["KB_LOCK_DIR"] = str(server_settings.lock_dir)
    done = CliRunner().invoke(main, ["restore", "--replace", str(dest)], env=env)
    assert done.exit_code == 1, done.output
    assert (
        f"{DISK_FULL}collection '{server_settings.collection}' is partial (what it held was "
        f"deleted; it holds part of the backup, or nothing). Run `kb restore --replace {dest}` "
        "to restore it whole."
    ) in done.output
    assert len(calls) == 2
    monkeypatch.undo()
    done = CliRunner().invoke(main, ["restore", "--replace", str(dest)], env=env)
    assert done.exit_code == 0, done.output
    store = KnowledgeStore.open(server_settings, embedder)
    try:
        assert contents(store) == before
    finally:
        store.close()


def env_settings(env: dict[str, str]) -> dict[str, object]:
    return {"chroma_path": Path(env["KB_CHROMA_PATH"]), "collection": env["KB_COLLECTION"]}


def test_a_backup_of_vectors_of_another_length_says_so(filled, tmp_path: Path) -> None:
    """It said "holds vectors of all-MiniLM-L6-v2 (a0bc...); the configured model is
    all-MiniLM-L6-v2 (a0bc...)", the same twice (review helper 63)."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    other = _with_header(dest, tmp_path / "dim.jsonl.gz", lambda header: header | {"dim": 512})
    with pytest.raises(ModelMismatch, match=r"vectors of 512 dimensions; .* gives 384"):
        backup.restore(filled, other, replace=True)


def _with_header(dest: Path, bad: Path, change: Callable[[dict], dict]) -> Path:
    """A copy of the backup `dest` at `bad` whose header is change(header)."""
    lines = gzip.decompress(dest.read_bytes()).splitlines(keepends=True)
    header = json.dumps(change(json.loads(lines[0]))).encode() + b"\n"
    bad.write_bytes(gzip.compress(b"".join([header, *lines[1:]])))
    return bad


def test_a_restore_gives_the_collection_the_backups_threshold_or_none(
    filled, tmp_path: Path, embedder
) -> None:
    """A backup with "min_score": null left the target's own calibrated threshold in place
    (after --replace too), so the restored documents were searched with a threshold
    calibrated for something else."""
    source = KnowledgeStore.open(Settings(chroma_path=tmp_path / "source"), embedder)
    try:
        source.add([DocumentIn(id="cat", text="The cat sat on the mat.")])
        dest = tmp_path / "uncalibrated.jsonl.gz"
        backup.write_file(source, dest)
    finally:
        source.close()
    assert backup.verify(dest)["min_score"] is None
    assert filled.records.settings_value(CALIBRATED_KEY) == 0.37
    backup.restore(filled, dest, replace=True)
    assert contents(filled) == [("cat", "The cat sat on the mat.", None)]
    assert resolve_threshold(filled, None).source == "configured"

    empty = KnowledgeStore.open(Settings(chroma_path=tmp_path / "empty"), embedder)
    try:
        empty.records.set_settings_value(CALIBRATED_KEY, 0.9)
        backup.restore(empty, dest)  # an empty collection can hold a threshold too
        assert resolve_threshold(empty, None).source == "configured"
        edge = _with_header(dest, tmp_path / "edge.jsonl.gz", lambda h: h | {"min_score": -1})
        backup.restore(empty, edge, replace=True)
        assert resolve_threshold(empty, None) == Threshold(min_score=-1.0, source="calibrated")
    finally:
        empty.close()


@pytest.mark.parametrize(
    ("min_score", "shown"),
    [(True, "not true"), (5, "not 5"), (-1.5, "not -1.5"), ("0.4", 'not "0.4"'), (..., "missing")],
    ids=["true", "5", "-1.5", "a string", "missing"],
)
def test_a_header_threshold_a_query_could_not_take_is_refused(
    filled, tmp_path: Path, settings: Settings, min_score: object, shown: str
) -> None:
    """`true` and 5 were stored as the calibrated threshold (true then filtered at 1.0)."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)

    def change(header: dict) -> dict:
        if min_score is ...:
            return {k: v for k, v in header.items() if k != "min_score"}
        return header | {"min_score": min_score}

    bad = _with_header(dest, tmp_path / "bad.jsonl.gz", change)
    before = contents(filled)
    with pytest.raises(ValidationFailed, match=rf"{bad}:1: the header's min_score .*{shown}"):
        backup.restore(filled, bad, replace=True)
    assert contents(filled) == before
    assert filled.records.settings_value(CALIBRATED_KEY) == 0.37
    filled.close()
    assert f"restore failed: {bad}:1: the header's min_score" in _restore_fails(settings, bad)


def _leftovers(folder: Path, name: str) -> list[str]:
    """What a backup to folder/name left beside it but the file itself."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(name) and p.name != name)


def test_a_backup_that_cannot_be_written_is_one_line_and_leaves_nothing(
    filled, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent that is a file, or a disk that fills up, was an OSError traceback and
    left DEST.partial behind."""
    (tmp_path / "a-file").write_text("x")
    dest = tmp_path / "copy.jsonl.gz"
    dest.write_bytes(b"the previous backup")
    filled.close()
    env = {"KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": settings.collection}
    blocked = tmp_path / "a-file" / "copy.jsonl.gz"
    done = CliRunner().invoke(main, ["backup", str(blocked)], env=env)
    assert done.exit_code == 1
    assert isinstance(done.exception, SystemExit)  # a message, not a traceback
    expected = f"backup failed: cannot write {blocked}: {tmp_path / 'a-file'}: not a directory"
    assert expected in done.output

    def full(store: KnowledgeStore, out) -> int:
        out.write(b"half a backup")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup, "dump", full)
    done = CliRunner().invoke(main, ["backup", str(dest)], env=env)
    assert done.exit_code == 1
    assert isinstance(done.exception, SystemExit)
    assert f"backup failed: cannot write {dest}: No space left on device" in done.output
    assert dest.read_bytes() == b"the previous backup"
    assert _leftovers(tmp_path, dest.name) == []


def test_a_received_backup_that_fails_leaves_nothing(filled, tmp_path: Path) -> None:
    """A stream cut off mid-way or a damaged backup: DEST keeps what it held and no
    partial file stays beside it."""
    good = tmp_path / "good.jsonl.gz"
    backup.write_file(filled, good)
    dest = tmp_path / "copy.jsonl.gz"
    dest.write_bytes(b"the previous backup")

    class Cut(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell():
                raise http.client.IncompleteRead(b"", 100)
            return super().read(10)

    with pytest.raises(KBError, match="the backup stopped arriving: IncompleteRead"):
        backup.save_stream(Cut(good.read_bytes()), dest)
    lines = gzip.decompress(good.read_bytes()).splitlines(keepends=True)
    with pytest.raises(ValidationFailed, match="holds"):
        backup.save_stream(io.BytesIO(gzip.compress(b"".join(lines[:-1]))), dest)
    assert dest.read_bytes() == b"the previous backup"
    assert _leftovers(tmp_path, dest.name) == []
    nested = tmp_path / "new" / "folder" / "copy.jsonl.gz"
    header = backup.save_stream(io.BytesIO(good.read_bytes()), nested)
    assert header["records"] == filled.records.count()
    assert nested.read_bytes() == good.read_bytes()


def test_backup_by_url_makes_missing_folders_and_reports_an_unwritable_dest(
    live_server: str, tmp_path: Path
) -> None:
    """The local backup made DEST's folders, --url raised FileNotFoundError; any DEST that
    could not be written was a traceback for both."""
    env = {"KB_CHROMA_PATH": str(tmp_path / "unused")}
    assert call(live_server, "/add", {"documents": [{"id": "a", "text": "alpha"}]})[0] == 201
    nested = tmp_path / "new" / "folder" / "copy.jsonl.gz"
    done = CliRunner().invoke(main, ["backup", str(nested), "--url", live_server], env=env)
    assert done.exit_code == 0, done.output
    assert backup.verify(nested)["records"] == 1
    (tmp_path / "a-file").write_text("x")
    blocked = tmp_path / "a-file" / "copy.jsonl.gz"
    done = CliRunner().invoke(main, ["backup", str(blocked), "--url", live_server], env=env)
    assert done.exit_code == 1
    assert isinstance(done.exception, SystemExit)
    assert f"backup failed: cannot write {blocked}: {tmp_path / 'a-file'}: not a directory" in (
        done.output
    )


def test_a_device_path_is_written_as_it_is() -> None:
    """/dev/stdout redirected to a file resolved to that file, and the finished backup was
    renamed over it: `kb backup /dev/stdout >> log` lost what the log held (review helper
    29)."""
    for device in (Path("/dev/stdout"), Path("/dev/null")):
        with files.replacing(device) as partial:
            assert partial == device


def test_head_backup_answers_headers_without_taking_a_backup(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEAD names what GET would send, and takes no snapshot: one holds writes off while it
    is written."""
    taken: list[object] = []

    def counted(store: KnowledgeStore):
        taken.append(store)
        return backup.snapshot(store)

    monkeypatch.setattr("kb.api.admin.snapshot", counted)
    head = client.head("/backup")
    assert head.status_code == 200
    assert head.mimetype == "application/gzip"
    assert head.headers["Content-Disposition"].startswith('attachment; filename="kb-')
    assert head.data == b""
    assert taken == []
    got = client.get("/backup")
    assert got.status_code == 200
    assert len(taken) == 1
    assert json.loads(gzip.decompress(got.data).splitlines()[0])["records"] == 0


def _collections(settings: Settings) -> set[str]:
    import chromadb

    client = chromadb.PersistentClient(path=str(settings.chroma_path))
    try:
        return {collection.name for collection in client.list_collections()}
    finally:
        client.close()


def test_a_restore_replace_killed_before_its_switch_leaves_the_store_as_it_was(
    filled, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while it wrote beside the store (SIGKILL: nothing removed it), the next open
    removes what it wrote; the store is as it was."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    filled.add([DocumentIn(id="later", text="A pasta sauce written after the backup.")])
    before = contents(filled)
    staged = filled.staging()
    assert staged is not None
    with backup._lines(dest, str(dest)) as lines:
        next(lines)
        backup._add_to(staged, [backup._record(line, 384, "x") for _, line in lines])
    filled.close()  # killed here: the switch never began
    assert _collections(settings) == {settings.collection, f"{settings.collection}-kb-new"}
    store = KnowledgeStore.open(settings, filled.embedder)
    try:
        assert contents(store) == before
        assert top(store, "later pasta", "keyword")[0][0] == "later"
    finally:
        store.close()
    assert _collections(settings) == {settings.collection}


def test_a_restore_replace_killed_inside_its_switch_is_finished_at_the_next_open(
    filled, tmp_path: Path, settings: Settings, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the switch's two renames, no collection has the store's name: the next
    open finishes the switch (it made an empty collection of that name, the restored records
    left aside), and the copies are rebuilt from the restored records."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    restored = contents(filled)
    filled.add([DocumentIn(id="later", text="A pasta sauce written after the backup.")])
    filled.close()

    renames: list[str] = []
    rename = RecordCollection.rename

    def killed(records: RecordCollection, name: str) -> None:  # dies at the second rename
        renames.append(name)
        if len(renames) == 2:
            raise SystemExit("killed")
        rename(records, name)

    monkeypatch.setattr(RecordCollection, "rename", killed)
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        with pytest.raises(SystemExit):
            backup.restore(store, dest, replace=True)
    finally:
        store.close()
    monkeypatch.undo()
    assert _collections(settings) == {f"{settings.collection}-kb-{s}" for s in ("new", "old")}
    store = KnowledgeStore.open(settings, embedder)
    try:
        assert contents(store) == restored
        assert "later" not in {doc_id for doc_id, _ in top(store, "later pasta", "keyword")}
        assert store.records.settings_value(CALIBRATED_KEY) == 0.37
    finally:
        store.close()
    assert _collections(settings) == {settings.collection}


def _segments(settings: Settings) -> tuple[set[str], set[str]]:
    """The segment folders in an embedded store's directory, and the segments Chroma lists."""
    import sqlite3

    folders = {p.name for p in settings.chroma_path.iterdir() if p.is_dir() and len(p.name) == 36}
    with sqlite3.connect(settings.chroma_path / "chroma.sqlite3") as db:
        listed = {row[0] for row in db.execute("SELECT id FROM segments")}
    return folders, listed


def test_a_restore_replace_leaves_no_vector_index_of_the_replaced_collection(
    filled, tmp_path: Path, settings: Settings, embedder
) -> None:
    """Chroma 1.5.9's delete_collection leaves the collection's vector index folder on disk
    (chroma #5520): each restore --replace stranded the replaced collection's for good, ~1.7 kB
    a record (review helper 97)."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    filled.close()
    for _ in range(2):
        store = KnowledgeStore.open(settings, embedder, searching=False)
        try:
            backup.restore(store, dest, replace=True)
        finally:
            store.close()
    folders, listed = _segments(settings)
    assert folders
    assert folders <= listed


def test_a_vector_index_folder_left_as_chromas_file_cannot_be_read_is_logged(
    filled,
    tmp_path: Path,
    settings: Settings,
    embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The folder's removal is best effort (a folder left is better than a failed restore),
    but since kb.chroma_file read Chroma's file a failed read left it silently: a warning
    names the file and the error, once."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    filled.close()
    # as a Chroma of another schema: no table of that name
    monkeypatch.setattr(collection, "SEGMENTS_QUERY", "SELECT id FROM kb_gone WHERE collection = ?")
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        with caplog.at_level(logging.WARNING, logger="kb"):
            backup.restore(store, dest, replace=True)
    finally:
        store.close()
    chroma = settings.chroma_path.absolute() / "chroma.sqlite3"
    warned = [r.getMessage() for r in caplog.records if str(chroma) in r.getMessage()]
    assert len(warned) == 1, warned
    assert "no such table: kb_gone" in warned[0]
    folders, listed = _segments(settings)
    assert folders - listed  # the replaced collection's, left


def test_collections_named_like_kbs_but_not_made_by_it_are_never_touched(
    filled, tmp_path: Path, settings: Settings, embedder
) -> None:
    """Every embedded open dropped '<name>-kb-new' and '<name>-kb-old' whoever made them,
    even for a command that then failed (review helper 97): only the ones a restore made
    (they carry the store's name) are; a restore --replace beside another's is refused."""
    import chromadb

    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    filled.close()
    client = chromadb.PersistentClient(path=str(settings.chroma_path))
    try:
        for suffix in ("kb-new", "kb-old"):
            theirs = client.create_collection(f"{settings.collection}-{suffix}")
            theirs.add(ids=["a"], embeddings=[[1.0, 0.0]], documents=["theirs"])
    finally:
        client.close()
    names = {settings.collection, *(f"{settings.collection}-kb-{s}" for s in ("new", "old"))}
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        with pytest.raises(ConfigError, match="kb did not make: rename or delete it"):
            backup.restore(store, dest, replace=True)
    finally:
        store.close()
    assert _collections(settings) == names
    with pytest.raises(ConfigError):  # a typo'd collection: the command fails, touching nothing
        KnowledgeStore.open(changed(settings, collection="other"), embedder, existing=True)
    assert _collections(settings) == names
    with pytest.raises(ValueError, match="are kb's"):
        changed(settings, collection=f"{settings.collection}-kb-new")


def test_a_ctrl_c_inside_the_switch_comes_after_it_and_says_the_backup_is_in_place(
    filled,
    tmp_path: Path,
    settings: Settings,
    embedder,
    monkeypatch: pytest.MonkeyPatch,
    ctrl_c_in_the_switch: None,
) -> None:
    """A Ctrl-C inside the switch said the store was partial and its records deleted, when it
    was as it was or whole restored (review helper 97): signals wait for the two renames,
    and the interruption says the backup is in place."""
    dest = tmp_path / "copy.jsonl.gz"
    backup.write_file(filled, dest)
    restored = contents(filled)
    filled.add([DocumentIn(id="later", text="A pasta sauce written after the backup.")])
    filled.close()
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        with pytest.raises(backup.RestoreInterrupted) as caught:
            backup.restore(store, dest, replace=True)
    finally:
        store.close()
    monkeypatch.undo()
    assert caught.value.switched
    store = KnowledgeStore.open(settings, embedder)
    try:
        assert contents(store) == restored
        assert store.records.settings_values().keys().isdisjoint(staging.MARKS)
    finally:
        store.close()
    assert _collections(settings) == {settings.collection}


def test_two_backups_of_one_store_are_the_same_bytes(filled, tmp_path: Path) -> None:
    """Chroma gives a record's metadata keys in another order at each read: two backups of
    one store differed on every line (fixer helper 96); the keys are written sorted."""
    filled.add(
        [
            DocumentIn(id=f"m{i}", text=f"Note {i}.", metadata=dict.fromkeys("zyxwvutsrq", i))
            for i in range(40)
        ]
    )
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    backup.write_file(filled, first)
    backup.write_file(filled, second)
    assert first.read_bytes() == second.read_bytes()


def test_a_restore_replace_in_a_store_named_by_a_relative_path(
    tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KB_CHROMA_PATH is relative by default (chroma_db): removing the replaced collection's
    folder asked for its database's file URI, which a relative path has none of, so the
    restore failed after its switch and every later open failed where it finished it
    (review helper 98)."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(chroma_path=Path("db"), collection="kb_test")
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        store.add([DocumentIn.model_validate(doc) for doc in COOKING])
        before = contents(store)
        backup.write_file(store, tmp_path / "copy.jsonl.gz")
        backup.restore(store, tmp_path / "copy.jsonl.gz", replace=True)
    finally:
        store.close()
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        assert contents(store) == before
    finally:
        store.close()
    assert _collections(changed(settings, chroma_path=tmp_path / "db")) == {"kb_test"}
    folders, listed = _segments(changed(settings, chroma_path=tmp_path / "db"))
    assert folders <= listed
