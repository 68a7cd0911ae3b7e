"""kb backup and kb restore: a consistent copy of a running store, brought back exactly."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb import backup
from kb.cli import main
from kb.config import Settings
from kb.errors import Conflict, ModelMismatch, ValidationFailed
from kb.filters import compile_filter
from kb.schemas import DocumentIn, QueryRequest
from kb.search import CALIBRATED_KEY, search
from kb.store import KnowledgeStore
from tests.conftest import COOKING
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


BAD_LINES = {
    "cut off": lambda r: json.dumps(r).encode()[:60] + b"\n",
    "no vector": lambda r: {k: v for k, v in r.items() if k != "vector"},
    "short vector": lambda r: r | {"vector": base64.b64encode(b"\0" * 16).decode()},
    "not base64": lambda r: r | {"vector": "@@@"},
    "NaN vector": lambda r: r | {"vector": base64.b64encode(b"\0\0\xc0\x7f" * 384).decode()},
    "text a number": lambda r: r | {"text": 7},
    "nested metadata": lambda r: r | {"metadata": r["metadata"] | {"x": {"y": 1}}},
    "id not its chunk": lambda r: r | {"id": r["id"] + "-renamed"},
    "no chunk fields": lambda r: r | {"metadata": {"a": 1}},
    # json.loads takes both; Chroma cannot store the first, json recursed on the second
    "lone surrogate": lambda r: (
        json.dumps(r | {"text": "x"}).encode().replace(b'"x"', b'"\\ud800"') + b"\n"
    ),
    "nested 100k deep": lambda r: b"[" * 100_000 + b"]" * 100_000 + b"\n",
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
    env = {"KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": settings.collection}
    done = CliRunner().invoke(main, ["restore", str(bad), "--replace"], env=env)
    assert done.exit_code == 1
    assert isinstance(done.exception, SystemExit)  # a message, not a traceback
    assert f"restore failed: {bad}:{len(lines)}: not valid JSON" in done.output
    store = KnowledgeStore.open(settings, filled.embedder)
    try:
        assert store.count() == 5
    finally:
        store.close()
