"""The bench's own logic with made-up figures: its checks, its report, the reuse of its query
stores, the answers its query load counts, its ingest rounds and what its results record.
No model, no Chroma, no server."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import checks, harness, info, ingest, query, report
from bench.corpus import documents

BASE = {"p50_ms": 10.0, "p95_ms": 12.0, "p99_ms": 14.0, "qps": 90.0, "other_cpu": 0.0}


def _cell(filter_name: str, clients: int, **figures: Any) -> dict[str, Any]:
    cell = {"filter": filter_name, "clients": clients, "p50_ms": 5.0, "p95_ms": 6.0}
    cell |= {"p99_ms": 7.0, "qps": 200.0, "errors": 0, "server_cores": 1.0}
    cell |= {"server_cpu_ms_per_query": 5.0, "other_cpu": 0.0}
    return cell | figures


def _query(cells: list[dict[str, Any]], docs: int = 100_000, **more: Any) -> dict[str, Any]:
    return {"docs": docs, "mode": None, "baseline": {"none": BASE}, "cells": cells} | more


def _rows(found: list[dict[str, Any]], *words: str) -> list[dict[str, Any]]:
    return [c for c in found if all(word in c["check"] for word in words)]


# ---------------------------------------------------------------- checks


def test_errors_are_checked_in_every_query_cell() -> None:
    found = checks.evaluate([], [_query([_cell("none", 1, errors=900), _cell("none", 4)])])
    errors = _rows(found, "filter none, 1 clients", "errors")
    assert [c["ok"] for c in errors] == [False]
    assert [c["ok"] for c in _rows(found, "filter none, 4 clients", "errors")] == [True]


def test_a_p50_or_rate_missing_because_every_request_failed_is_missed() -> None:
    failed = {"p50_ms": None, "qps": 0.0, "errors": 2000}
    cells = [_cell("selective", 1, **failed), _cell("selective", 16, **failed)]
    found = checks.evaluate([], [_query(cells)])
    assert [c["ok"] for c in _rows(found, "selective, 1 clients", "p50")] == [False]
    assert [c["ok"] for c in _rows(found, "selective, 16 clients", "q/s")] == [False]
    assert "MISSED" in _rows(found, "selective, 1 clients", "p50")[0]["verdict"]


def test_the_report_shows_a_cell_where_every_request_failed() -> None:
    cell = _cell("none", 1, p50_ms=None, p95_ms=None, p99_ms=None, qps=0.0, errors=3000)
    report.query([_query([cell])])  # raised TypeError dividing by None


def test_expected_cells_that_did_not_run_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    found = checks.evaluate([], [_query([_cell("none", 1), _cell("none", 4)])])
    missing = [c["check"] for c in found if c.get("measured") is False]
    assert "100000 docs, filter none, 16 clients: q/s, errors" in missing
    assert "100000 docs, filter broad, 1 clients: p50 ms" in missing
    assert "100000 docs: cold start" in missing
    checks.show(found)
    assert "not measured" in capsys.readouterr().out


def test_a_verdict_on_a_busy_cell_says_it_is_unreliable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    found = checks.evaluate([], [_query([_cell("none", 1, p50_ms=12.0, other_cpu=0.47)])])
    checks.show(found)
    line = next(x for x in capsys.readouterr().out.splitlines() if "none, 1 clients: p50" in x)
    assert "MISSED" in line
    assert "unreliable" in line
    assert "47%" in line
    quiet = checks.evaluate([], [_query([_cell("none", 1, other_cpu=0.02)])])
    assert "unreliable" not in _rows(quiet, "p50")[0]["verdict"]


def test_memory_counts_the_children_after_the_query_load_and_in_large_adds() -> None:
    memory = {"peak_rss_mib": 1000.0, "children_peak_rss_mib": 600.0}
    add = {"vs_baseline": 2.1, "vs_encoder": 0.8, "peak_rss_mib": 1200.0}
    add |= {"children_peak_rss_mib": 400.0}
    ingested = [{"kind": "short", "docs": 100_000, "other_cpu": 0.0, "post_add": add}]
    found = checks.evaluate(ingested, [_query([], memory_after_load=memory)])
    after_load = _rows(found, "after the query load")
    assert [(c["value"], c["ok"]) for c in after_load] == [(1600.0, False)]
    adds = _rows(found, "POST /add short 100000", "RSS")
    assert [(c["value"], c["ok"]) for c in adds] == [(1600.0, False)]
    small = [{**ingested[0], "docs": 10_000}]
    assert not _rows(checks.evaluate(small, []), "POST /add", "RSS")


def test_the_whole_process_ratio_is_informational() -> None:
    load = {"vs_baseline": 1.52, "wall_vs_baseline": 2.4, "vs_encoder": 0.76}
    found = checks.evaluate(
        [{"kind": "short", "docs": 1000, "other_cpu": 0.0, "kb_load": load}], []
    )
    whole = _rows(found, "whole process")
    assert len(whole) == 1
    assert whole[0]["ok"] is None
    assert whole[0]["informational"]
    assert "not the issue's target" in whole[0]["verdict"]
    assert [c["ok"] for c in _rows(found, "kb load short 1000 vs baseline")] == [False]


def test_cold_start_shows_the_time_to_ready() -> None:
    start = {"median_s": 1.5, "ready_median_s": 13.0}
    found = checks.evaluate([], [_query([], cold_start=start)])
    assert [c["ok"] for c in _rows(found, "cold start")] == [True]
    ready = _rows(found, "to ready")
    assert [(c["value"], c["ok"]) for c in ready] == [(13.0, None)]


# ---------------------------------------------------------------- the query store


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """query.STORES under tmp_path, kb load faked (it makes the folder), HEAD at 'head'."""
    built: list[Path] = []

    def fake_load(corpus: Path, store: Path, expected: int) -> dict[str, Any]:
        store.mkdir(parents=True)
        built.append(store)
        return {"added": expected}

    monkeypatch.setattr(query, "STORES", tmp_path)
    monkeypatch.setattr(query, "kb_load", fake_load)
    monkeypatch.setattr(info, "git", lambda: {"commit": "head" * 10, "dirty": False}, raising=False)
    return built


def test_a_store_of_an_unrecorded_format_is_built_again(stores: list[Path]) -> None:
    (query.STORES / "short-20-v1").mkdir()
    marker = {"docs": 20, "collection": "bench", "load": {}}  # as kept before the format was
    (query.STORES / "short-20-v1.json").write_text(json.dumps(marker))
    store, built = query.store_for(20)
    assert stores == [store]
    assert not built["cached"]
    kept = json.loads((query.STORES / "short-20-v1.json").read_text())
    assert kept["store_format"] == query.STORE_FORMAT
    assert kept["commit"] == "head" * 10
    assert kept["kb_version"]
    assert kept["corpus_sha256"]
    _, again = query.store_for(20)
    assert again["cached"]
    assert stores == [store]
    assert not again["built_by_other_commit"]


def test_a_store_built_by_another_commit_is_reused_with_a_warning(
    stores: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    query.store_for(20)
    marker = query.STORES / "short-20-v1.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"commit": "0123456789ab"}))
    _, built = query.store_for(20)
    assert built["cached"]
    assert len(stores) == 1
    assert built["built_by_other_commit"]
    assert built["commit"] == "0123456789ab"
    assert "built by 0123456789" in capsys.readouterr().out
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"store_format": -1}))
    assert not query.store_for(20)[1]["cached"]
    assert len(stores) == 2


# ---------------------------------------------------------------- the query load


def _answer(matches: int, rejected: int = 0, body: bytes = b"{}") -> bytes:
    """A /query answer of `matches` matches that obey the filter of the request `body`."""
    asked = json.loads(body or b"{}")
    metadata = {
        key: value[0] if isinstance(value, list) else value
        for key, value in asked.get("filters", {}).items()
    }
    text = "the text " + asked.get("where_document", {}).get("$contains", "")
    shown = [
        {"id": f"d{i}", "score": 0.5, "text": text, "metadata": metadata} for i in range(matches)
    ]
    return json.dumps({"matches": shown, "rejected": rejected, "status": "ok"}).encode()


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    def read(self) -> bytes:
        return self.body


class _Conn:
    """An HTTPConnection answering /query with `answer(body)`."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.body = answer, b""

    def request(self, method: str, path: str, body: bytes | None = None, headers: Any = None):
        self.body = body or b""

    def getresponse(self) -> _Response:
        return _Response(*self.answer(self.body))

    def close(self) -> None:
        pass


class _Server:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.proc = type("Proc", (), {"pid": os.getpid()})()

    def connect(self, timeout: float = 120.0) -> _Conn:
        return _Conn(self.answer)


def test_a_200_with_a_wrong_answer_is_an_error() -> None:
    answers = itertools.cycle([_answer(5), _answer(2), b'{"oops": 1}', _answer(2, rejected=3)])
    lock = threading.Lock()

    def answer(body: bytes) -> tuple[int, bytes]:
        with lock:
            return 200, next(answers)

    out = query.load(_Server(answer), [b"{}"], 1, 0.05)  # type: ignore[arg-type]
    assert out["errors"] > 0
    assert out["n"] > 0
    assert out["errors"] >= out["n"] - 1  # two of every four are wrong, two right
    assert set(out["error_kinds"]) == {"200, under 5 matches", "200, not a query answer"}


def test_the_warm_up_asks_for_full_answers_where_the_filter_allows_them() -> None:
    def short_without_threshold(body: bytes) -> tuple[int, bytes]:
        # five shown, but three with the threshold off: a search that loses matches
        asked = json.loads(body)
        return 200, _answer(3 if "min_score" in asked else 5, body=body)

    docs = documents("short", 200)
    server = _Server(short_without_threshold)
    with pytest.raises(RuntimeError, match="not 5"):
        query.check_answers(server, None, docs)  # type: ignore[arg-type]
    full = _Server(lambda body: (200, _answer(5, body=body)))
    assert set(query.check_answers(full, None, docs).values()) == {5.0}  # type: ignore[arg-type]
    assert query.answer_problem(_answer(3, rejected=2)) is None  # the threshold cut two
    assert query.answer_problem(_answer(3)) == "200, under 5 matches"
    assert query.answer_problem(_answer(6)) == "200, more than 5 matches"
    assert query.answer_problem(_answer(0), least=0) is None


# ---------------------------------------------------------------- ingest


def test_repeated_rounds_report_the_largest_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    rates = {"baseline": [200, 210, 190], "encoder": [600, 620, 580], "kb_load": [450, 460, 440]}
    rates["post_add"] = [400, 380, 420]
    rss = [1300.0, 1350.0, 1500.0]  # the median-rate round's is the lowest
    calls = {part: itertools.count() for part in rates}

    def fake(part: str, docs: Any, corpus: Path, work: Path) -> dict[str, Any]:
        i = next(calls[part])
        figures = {"docs_per_s": rates[part][i], "cpu_s": 10.0, "add_cpu_s": 1.0}
        figures["wall_docs_per_s"] = 1.0
        if part == "post_add":
            figures |= {"peak_rss_mib": rss[i], "children_peak_rss_mib": 300.0 - 100 * i}
        return figures

    monkeypatch.setattr(ingest, "_part", fake)
    cell = ingest.cell("short", 30, repeat=3)
    assert cell["post_add"]["docs_per_s"] == 400  # the median round's rate
    assert cell["post_add"]["peak_rss_mib"] == 1500.0
    assert cell["post_add"]["children_peak_rss_mib"] == 300.0
    assert cell["post_add"]["peak_total_mib"] == 1600.0
    assert cell["corpus_sha256"]


def test_post_add_sends_as_kb_load_url_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_conflict skip, and the two senders take the next batch from one queue: a slow
    connection sends fewer."""
    docs = [{"id": f"d{i}", "text": "x"} for i in range(5000)]
    bodies = ingest.add_bodies(docs)
    assert {json.loads(b)["on_conflict"] for b in bodies} == {"skip"}
    sent: dict[int, int] = {0: 0, 1: 0}

    class Conn(_Conn):
        def __init__(self, n: int) -> None:
            super().__init__(None)
            self.n = n

        def getresponse(self) -> _Response:
            if self.body is None or not self.body:  # GET /health
                return _Response(200, json.dumps({"documents": len(docs)}).encode())
            sent[self.n] += 1
            time.sleep(0.2 if self.n == 0 else 0.001)
            added = len(json.loads(self.body)["documents"])
            return _Response(201, json.dumps({"added": added, "skipped": 0}).encode())

    class Server:
        def __init__(self, *args: Any) -> None:
            self.made = itertools.count()

        def __enter__(self) -> Server:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def wait(self) -> float:
            return 0.0

        def connect(self, timeout: float = 120.0) -> Conn:
            return Conn(next(self.made))

        def memory(self) -> dict[str, float]:
            return {"peak_rss_mib": 1.0, "children_peak_rss_mib": 0.0}

    monkeypatch.setattr(ingest, "Server", Server)
    out = ingest.post_add(docs, Path("/nonexistent"), Path("/nonexistent.log"))
    assert out["requests"] == len(bodies) == sent[0] + sent[1]
    assert sent[0] < sent[1]  # dealt in turn, each had half


# ---------------------------------------------------------------- what results record


def test_results_hold_every_setting_and_the_thread_variables_not_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "k" * 40
    monkeypatch.setenv("KB_API_KEYS", f"write:{key}")  # a valid spec: Settings checks it
    monkeypatch.setenv("KB_ANN_NPROBE", "8")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    settings = info.kb_settings()
    assert settings["ann_nprobe"] == 8
    assert "malloc_arenas" in settings
    assert "error" not in settings
    assert key not in json.dumps(settings)
    env = info.environment()
    assert env["KB_ANN_NPROBE"] == "8"
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert "HOME" not in env
    assert key not in json.dumps(env)
    assert "KB_API_KEYS" in env


def test_every_results_file_holds_the_corpus_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    path = harness.save_results("x", {"runs": []})
    assert len(json.loads(path.read_text())["corpus_sha256"]) == 64


def test_a_dirty_tree_is_recorded_with_its_changes(tmp_path: Path) -> None:
    """Results said `dirty: true` alone: figures measured on uncommitted code could not be
    traced to it. The tracked files' diff and git's status lines (untracked files too) are
    kept; a clean tree records none."""
    import subprocess

    def git(*args: str) -> None:
        who = ["-c", "user.name=bench", "-c", "user.email=bench@example.org"]
        subprocess.run(["git", *who, *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "kb.py").write_text("BATCH = 64\n")
    git("add", "kb.py")
    git("commit", "-q", "-m", "first")
    clean = info.git(tmp_path)
    assert clean["dirty"] is False
    assert "diff" not in clean
    assert "status" not in clean
    (tmp_path / "kb.py").write_text("BATCH = 128\n")
    (tmp_path / "new.py").write_text("x = 1\n")
    dirty = info.git(tmp_path)
    assert dirty["commit"] == clean["commit"]
    assert dirty["dirty"] is True
    assert "-BATCH = 64\n+BATCH = 128" in dirty["diff"]
    assert sorted(dirty["status"]) == [" M kb.py", "?? new.py"]


def test_the_results_record_the_settings_the_timed_processes_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The results recorded the bench process's settings only: query_cache 1024 and
    collection knowledge_base for servers that ran with 0 and 'bench' (review helper 74)."""
    from bench.harness import served_as

    monkeypatch.delenv("KB_QUERY_CACHE", raising=False)
    before = dict(os.environ)
    served = served_as()
    assert served["settings"]["query_cache"] == 0
    assert served["settings"]["collection"] == "bench"
    assert served["environment"]["KB_QUERY_CACHE"] == "0"
    assert served["environment"]["KB_CHROMA_PATH"] == "STORE"
    assert dict(os.environ) == before
