"""The kb command line: load (formats, bad records, idempotency, strict) and calibrate."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from kb.cli import main
from kb.config import Settings
from kb.filters import compile_filter
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A store of its own; loads of any size embed in an encoder process, as large ones do
    (the path most loads take)."""
    return {
        "KB_CHROMA_PATH": str(tmp_path / "db"),
        "KB_COLLECTION": "cli_test",
        "KB_ENCODER_PROCESS_MIN_TEXTS": "1",
    }


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def stored(env: dict[str, str], embedder) -> KnowledgeStore:
    settings = Settings(chroma_path=Path(env["KB_CHROMA_PATH"]), collection=env["KB_COLLECTION"])
    return KnowledgeStore.open(settings, embedder)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = [
    {"id": "a", "text": "Alpha document", "metadata": {"n": 1}},
    {"id": "b", "text": "Beta document"},
    {"text": "A document without an id"},
]


def test_load_jsonl_then_again_adds_nothing(env, tmp_path: Path, embedder) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    first = run(env, "load", str(source))
    assert first.exit_code == 0, first.output
    assert "added 3, updated 0, skipped 0, failed 0" in first.output
    second = run(env, "load", str(source))
    assert "added 0, updated 0, skipped 3, failed 0" in second.output
    assert "differ from their stored version" not in second.output
    store = stored(env, embedder)
    assert store.count() == 3
    assert store.get("a").metadata == {"n": 1}
    store.close()
    # an edited record is skipped as stored, and the summary says so (it said "skipped" alone)
    edited = write_jsonl(tmp_path / "edited.jsonl", [{**GOOD[0], "metadata": {"n": 2}}])
    third = run(env, "load", str(edited))
    assert "added 0, updated 0, skipped 1, failed 0" in third.output
    assert (
        "warning: 1 of the skipped documents differ from their stored version: load again "
        "with --upsert to replace them"
    ) in third.output


@pytest.fixture
def sigint(request: pytest.FixtureRequest) -> Iterator[None]:
    """SIGINT handled as in a terminal's foreground (indirectly: as given). A test process
    started as a script's background job inherits it ignored, and kb load then keeps
    ignoring it, as it should: this test failed so in a CI run started with `&`."""
    previous = signal.signal(signal.SIGINT, getattr(request, "param", signal.default_int_handler))
    yield
    signal.signal(signal.SIGINT, previous)


def interrupting_the_second_commit(
    monkeypatch: pytest.MonkeyPatch, sig: signal.Signals = signal.SIGINT
) -> None:
    """KnowledgeStore.commit sends this process `sig` on its second call (SIGINT: a Ctrl-C)."""
    commit, calls = KnowledgeStore.commit, []

    def interrupted(self: KnowledgeStore, prepared: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)
            time.sleep(0.2)
        return commit(self, prepared)  # type: ignore[arg-type]

    monkeypatch.setattr(KnowledgeStore, "commit", interrupted)


@pytest.mark.usefixtures("sigint")
def test_a_ctrl_c_stops_a_load_after_the_batches_under_way_and_counts_them(
    env, tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed "Aborted!" (and, with an encoder process, that process' traceback) and no
    counts. Now the batches under way are written and counted, exit 130, and loading again
    finishes the load."""
    docs = [{"id": f"d{i}", "text": f"note {i} on indexes"} for i in range(400)]
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    interrupting_the_second_commit(monkeypatch)
    first = run(env, "load", "--batch-size", "20", str(source))
    monkeypatch.undo()
    assert first.exit_code == 130, first.output
    assert "Load interrupted" in first.output
    added = int(re.search(r"added (\d+),", first.output).group(1))  # type: ignore[union-attr]
    store = stored(env, embedder)
    assert 0 < added == store.count() < len(docs)
    store.close()
    again = run(env, "load", str(source))
    assert f"added {len(docs) - added}, updated 0, skipped {added}" in again.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_sigterm_stops_a_load_after_the_batches_under_way_as_a_ctrl_c_does(
    env, tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (timeout(1), systemd, a container's stop) killed kb load at once, with no
    counts (review helpers 81 and 85)."""

    def unhandled(signum: int, frame: object) -> None:  # fails the test, not the whole run
        raise AssertionError("kb load left SIGTERM unhandled")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        docs = [{"id": f"d{i}", "text": f"note {i} on indexes"} for i in range(400)]
        source = write_jsonl(tmp_path / "docs.jsonl", docs)
        interrupting_the_second_commit(monkeypatch, signal.SIGTERM)
        first = run(env, "load", "--batch-size", "20", str(source))
        monkeypatch.undo()
        assert first.exit_code == 143, first.output  # 128 + SIGTERM
        assert "Terminated: the load stops after the batches under way" in first.output
        assert "Load interrupted: the batches under way were written" in first.output
        added = int(re.search(r"added (\d+),", first.output).group(1))  # type: ignore[union-attr]
        store = stored(env, embedder)
        assert 0 < added == store.count() < len(docs)
        store.close()
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("sigint", [signal.SIG_IGN], indirect=True)
def test_a_load_that_inherits_sigint_ignored_keeps_ignoring_it(
    env, tmp_path: Path, sigint: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background job of a script: its SIGINT is the script's business, not the load's."""
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"n {i}"} for i in range(100)])
    interrupting_the_second_commit(monkeypatch)
    result = run(env, "load", "--batch-size", "20", str(source))
    assert result.exit_code == 0, result.output
    assert "added 100, updated 0, skipped 0, failed 0" in result.output
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.fixture
def encoder_processes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The encoder processes kb load starts (recorded, then started as usual)."""
    from kb.encoders import process

    started: list[object] = []

    class Recorded(process.EncoderProcess):
        def __init__(self, settings: Settings) -> None:
            started.append(self)
            super().__init__(settings)

    monkeypatch.setattr(process, "EncoderProcess", Recorded)
    return started


def test_a_small_load_embeds_in_process_and_a_large_one_in_an_encoder_process(
    env, tmp_path: Path, embedder, encoder_processes: list[object]
) -> None:
    """Under 800 bytes per KB_ENCODER_PROCESS_MIN_TEXTS (kb serve's starting rule) the load is
    over before a second interpreter would have loaded the model; above it, or from standard
    input (size unknown), an encoder process embeds while the load writes; with the setting
    at 0, never. Same vectors."""
    docs = [{"id": f"d{i}", "text": f"note {i} on indexes and their write cost"} for i in range(40)]
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    assert 800 < source.stat().st_size < 800 * Settings().encoder_process_min_texts
    small = {**env, "KB_ENCODER_PROCESS_MIN_TEXTS": str(Settings().encoder_process_min_texts)}
    assert run(small, "load", str(source)).exit_code == 0
    assert encoder_processes == []
    large = {**env, "KB_COLLECTION": "cli_large"}  # KB_ENCODER_PROCESS_MIN_TEXTS=1
    assert run(large, "load", str(source)).exit_code == 0
    assert len(encoder_processes) == 1
    piped = {**small, "KB_COLLECTION": "cli_piped"}
    assert run(piped, "load", "-", stdin=source.read_text()).exit_code == 0
    assert len(encoder_processes) == 2
    never = {**env, "KB_COLLECTION": "cli_never", "KB_ENCODER_PROCESS_MIN_TEXTS": "0"}
    assert run(never, "load", "-", stdin=source.read_text()).exit_code == 0
    assert len(encoder_processes) == 2
    vectors = []
    for collection in ("cli_test", "cli_large", "cli_piped"):
        store = stored({**env, "KB_COLLECTION": collection}, embedder)
        assert store.count() == len(docs)
        vectors.append(store.records.get(["d7"], embeddings=True)[0].embedding)
        store.close()
    assert np.abs(np.asarray(vectors[0]) - np.asarray(vectors[1])).max() < 1e-5
    assert np.abs(np.asarray(vectors[0]) - np.asarray(vectors[2])).max() < 1e-5


def test_bad_records_are_reported_with_line_numbers_and_skipped(
    env, tmp_path: Path, embedder
) -> None:
    records = [
        GOOD[0],
        "{not json",
        {"id": "c"},
        {"text": "ok", "metadata": {"x": {"y": 1}}},
        GOOD[1],
    ]
    result = run(env, "load", str(write_jsonl(tmp_path / "mixed.jsonl", records)))
    assert result.exit_code == 1
    assert "mixed.jsonl:2: not valid JSON (" in result.output
    assert "line 1 column" not in result.output  # the column only: line 1 was the record's
    assert "mixed.jsonl:3: text:" in result.output
    assert "mixed.jsonl:4: metadata:" in result.output
    assert "added 2, updated 0, skipped 0, failed 3" in result.output
    store = stored(env, embedder)
    assert store.count() == 2
    store.close()


def test_a_list_mixing_integers_and_decimals_fails_its_record_only(
    env, tmp_path: Path, embedder
) -> None:
    """Chroma refuses [1, 2.5] for the whole batch it is in: kb reports the record itself
    and loads the rest of the batch."""
    records = [GOOD[0], {"id": "mixed", "text": "Scores", "metadata": {"s": [1, 2.5]}}, GOOD[1]]
    result = run(env, "load", str(write_jsonl(tmp_path / "in.jsonl", records)))
    assert result.exit_code == 1
    assert "in.jsonl:2: metadata" in result.output
    assert "integers or all decimals" in result.output
    assert "added 2, updated 0, skipped 0, failed 1" in result.output
    store = stored(env, embedder)
    assert sorted(store.get_many(["a", "b", "mixed"])) == ["a", "b"]
    store.close()


def test_strict_stops_at_the_first_bad_record(env, tmp_path: Path, embedder) -> None:
    records = [GOOD[0], {"id": "bad"}, GOOD[1]]
    result = run(env, "load", "--strict", str(write_jsonl(tmp_path / "s.jsonl", records)))
    assert result.exit_code == 1
    assert "s.jsonl:2" in result.output
    store = stored(env, embedder)
    assert sorted(store.get_many(["a", "b", "bad"])) == ["a"]
    store.close()


def test_upsert_updates_changed_records(env, tmp_path: Path, embedder) -> None:
    run(env, "load", str(write_jsonl(tmp_path / "v1.jsonl", GOOD)))
    changed = [{**GOOD[0], "text": "Alpha, revised"}, GOOD[1]]
    result = run(env, "load", "--upsert", str(write_jsonl(tmp_path / "v2.jsonl", changed)))
    assert "added 0, updated 1, skipped 1" in result.output
    store = stored(env, embedder)
    assert store.get("a").text == "Alpha, revised"
    store.close()


def test_json_array_folder_and_stdin(env, tmp_path: Path, embedder) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "list.json").write_text(json.dumps(GOOD[:2]))
    write_jsonl(folder / "more.jsonl", [GOOD[2]])
    loaded = run(env, "load", str(folder)).output
    assert "added 3" in loaded
    assert "holds no file" not in loaded
    piped = run(env, "load", "-", stdin=json.dumps({"id": "s", "text": "From a pipe"}) + "\n")
    assert "added 1" in piped.output
    store = stored(env, embedder)
    assert store.count() == 4
    store.close()


def test_a_file_named_twice_or_inside_a_named_folder_is_read_once(
    env, tmp_path: Path, embedder
) -> None:
    """`kb load notes notes/a.md` stored a.md twice, under "a.md" and under its path in the
    folder; `kb load - -` read stdin twice."""
    notes = tmp_path / "notes"
    (notes / "ml").mkdir(parents=True)
    (notes / "ml" / "intro.md").write_text("# Intro\nGradient descent, step by step.\n")
    result = run(env, "load", str(notes), str(notes / "ml" / "intro.md"), str(notes))
    assert result.exit_code == 0, result.output
    assert "added 1, updated 0, skipped 0, failed 0" in result.output
    assert "named more than once (or inside a folder also named), read once: " in result.output
    store = stored(env, embedder)
    assert store.count() == 1
    store.close()
    piped = run(env, "load", "-", "-", stdin=json.dumps({"id": "s", "text": "From a pipe"}))
    assert "read once: -" in piped.output
    assert "added 1, updated 0, skipped 0, failed 0" in piped.output


@pytest.mark.parametrize("first", ["file", "subfolder"])
def test_a_file_named_before_its_folder_gets_the_folders_id(
    env, tmp_path: Path, embedder, first: str
) -> None:
    """`kb load notes/ml/intro.md notes` stored it as "intro.md", so a later `kb load notes`
    added a second copy as "ml/intro.md", and warned that notes held no file kb reads (review
    helper 58): the mention through the outermost folder named gives the id."""
    notes = tmp_path / "notes"
    (notes / "ml").mkdir(parents=True)
    (notes / "ml" / "intro.md").write_text("# Intro\nGradient descent, step by step.\n")
    named = notes / "ml" / "intro.md" if first == "file" else notes / "ml"
    result = run(env, "load", str(named), str(notes))
    assert result.exit_code == 0, result.output
    assert "added 1, updated 0, skipped 0, failed 0" in result.output
    assert "read once: " in result.output
    assert "holds no file" not in result.output
    store = stored(env, embedder)
    assert store.count() == 1
    assert store.get("ml/intro.md").text.startswith("# Intro")
    store.close()
    again = run(env, "load", str(notes))
    assert "added 0, updated 0, skipped 1, failed 0" in again.output, again.output


def test_a_folder_holding_no_file_kb_reads_is_said_to(env, tmp_path: Path) -> None:
    """It gave a summary of zeros, as if its files had been read (review helper 26)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "page.pdf").write_bytes(b"%PDF-1.7")
    result = run(env, "load", str(folder))
    assert result.exit_code == 0
    assert f"warning: {folder} holds no file kb reads (.jsonl," in result.output
    assert "added 0" in result.output
    named = run(env, "load", "--format", "md", str(folder))  # --format reads every file
    assert "holds no file" not in named.output


def test_an_input_without_documents_is_said_to_hold_none(env, tmp_path: Path) -> None:
    """`kb export | kb load -` after a failed export read nothing and said only "added 0",
    rc 0, like a load of documents all stored before. Blank lines are no documents either;
    a folder holding no file kb reads gets its own warning, not this one too."""
    piped = run(env, "load", "-", stdin="")
    assert piped.exit_code == 0, piped.output
    assert "warning: the input held no documents (standard input): nothing was loaded" in (
        piped.output
    )
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    assert "warning: the input held no documents" in run(env, "load", str(blank)).output
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = run(env, "load", str(empty))
    assert "holds no file kb reads" in folder.output
    assert "held no documents" not in folder.output
    source = write_jsonl(tmp_path / "good.jsonl", GOOD)
    assert "added 3" in run(env, "load", str(source)).output
    again = run(env, "load", str(source))  # all skipped: documents were read
    assert "skipped 3" in again.output
    assert "held no documents" not in again.output


def test_loading_the_current_folder_loads_it_without_a_warning(
    env, tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kb load .` warned that "." holds no file kb reads, then loaded it; a front matter
    YAML could not build (a ValueError) stopped the folder's load with a traceback."""
    folder = tmp_path / "notes"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD.md").write_text("ref: refs/heads/main\n")
    (folder / "a.md").write_text("---\nwhen: 2024-03-02T10:00:00Z\n---\nA note\n")
    (folder / "b.md").write_text("---\nd: 2024-02-30\nn: !!int x\n---\nB\n")
    monkeypatch.chdir(folder)
    for path, added in [(".", 1), ("./", 0)]:  # the second load finds a.md stored
        result = run(env, "load", path)
        assert "holds no file" not in result.output
        assert "error: b.md:3: front matter: 'x' cannot be read as !!int" in result.output
        assert f"added {added}, updated 0, skipped {1 - added}, failed 1" in result.output
        assert result.exit_code == 1
    store = stored(env, embedder)
    assert store.get("a.md").metadata == {"when": "2024-03-02T10:00:00Z"}
    assert store.count() == 1  # .git/HEAD.md left out
    store.close()


def test_markdown_documents_from_stdin_get_ids_of_their_own(env, embedder) -> None:
    """Every stdin document had the id "-": the second load skipped its new document."""
    assert "added 1," in run(env, "load", "--format", "md", "-", stdin="First note\n").output
    second = run(env, "load", "--format", "md", "-", stdin="\ufeff---\ntitle: B\n---\nSecond\n")
    assert "added 1," in second.output
    named = run(env, "load", "--format", "md", "-", stdin="---\nid: n3\n---\nThird\n")
    assert "added 1," in named.output
    store = stored(env, embedder)
    assert store.count() == 3
    assert store.get("n3").text == "Third\n"
    second_docs = store.iter_documents(compile_filter(where={"title": "B"}))
    assert [d.text for d in second_docs] == ["Second\n"]
    store.close()


def test_stdin_bytes_that_are_not_utf8_fail_their_line(env) -> None:
    result = CliRunner().invoke(
        main,
        ["load", "-"],
        env=env,
        input=b'\xef\xbb\xbf{"text": "one"}\n{"text": "caf\xe9"}\n{"text": "three"}\n',
    )
    assert "<stdin>:2: not UTF-8 text: byte 0xe9" in result.output
    assert "added 2, updated 0, skipped 0, failed 1" in result.output


def test_repeated_ids_in_one_file(env, tmp_path: Path) -> None:
    records = [GOOD[0], GOOD[0], {"id": "a", "text": "Different text"}]
    result = run(env, "load", str(write_jsonl(tmp_path / "rep.jsonl", records)))
    assert "rep.jsonl:3: id 'a' repeats" in result.output
    assert "added 1, updated 0, skipped 1, failed 1" in result.output


def test_calibrate_recommends_a_threshold(env, tmp_path: Path) -> None:
    pairs = [
        {"a": "How do I boil pasta?", "b": "Cook pasta in salted boiling water.", "label": 1},
        {"a": "A feline rested on the rug", "b": "The cat sat on the mat", "label": 1},
        {"a": "How do I boil pasta?", "b": "The stock market fell sharply.", "label": 0},
        {"a": "Python snakes eat rodents", "b": "Python lists are mutable", "label": 0},
    ]
    result = run(env, "calibrate", "--pairs", str(write_jsonl(tmp_path / "pairs.jsonl", pairs)))
    assert result.exit_code == 0, result.output
    assert "recommended threshold:" in result.output
    assert "f1 1.000" in result.output


def test_export_then_load_into_an_empty_store_reproduces_it(env, tmp_path: Path, embedder) -> None:
    long = " ".join(f"Sentence {i} of a long essay about vector search." for i in range(80))
    records = [*GOOD, {"id": "long", "text": long, "metadata": {"tags": [], "d": "2024-01-01"}}]
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", records)))
    dump = tmp_path / "dump.jsonl"
    result = run(env, "export", "-o", str(dump))
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {r["id"] for r in exported} == {"a", "b", "long", exported[2]["id"]}
    assert all(not k.startswith("_kb_") for r in exported for k in r.get("metadata", {}))

    copy = {**env, "KB_CHROMA_PATH": str(tmp_path / "copy")}
    assert "added 4" in run(copy, "load", str(dump)).output
    original, restored = stored(env, embedder), stored(copy, embedder)
    ids = [r["id"] for r in exported]
    assert original.get_many(ids) == restored.get_many(ids)
    assert restored.get("long").text == long
    assert restored.get("long").chunks > 1
    original.close()
    restored.close()


def test_an_export_named_json_is_a_json_array_kb_load_reads(env, tmp_path: Path, embedder) -> None:
    """`kb export -o kb.json` wrote JSON lines, which `kb load kb.json` read as one JSON value
    and failed ("Extra data"), rc 1 (review helper 58): to a .json name the export is a JSON
    array, and a .json file holding JSON lines (`kb export > kb.json`) is read as such."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    array, piped = tmp_path / "kb.json", tmp_path / "piped.json"
    assert run(env, "export", "-o", str(array)).exit_code == 0
    exported = json.loads(array.read_text())
    assert isinstance(exported, list)
    assert len(exported) == 3
    piped.write_text(run(env, "export").stdout)
    assert (
        run(env, "export", "--where", '{"n": 7}', "-o", str(tmp_path / "none.json")).exit_code == 0
    )
    assert json.loads((tmp_path / "none.json").read_text()) == []
    original = stored(env, embedder)
    ids = [record["id"] for record in exported]
    for name, dump in (("array", array), ("lines", piped)):
        copy = {**env, "KB_CHROMA_PATH": str(tmp_path / name)}
        result = run(copy, "load", str(dump))
        assert result.exit_code == 0, result.output
        assert "added 3, updated 0, skipped 0, failed 0" in result.output
        restored = stored(copy, embedder)
        assert restored.get_many(ids) == original.get_many(ids)
        restored.close()
    original.close()
    broken = tmp_path / "broken.json"
    broken.write_text('{"text": "one"}\n{"text": \n')
    result = run(env, "load", str(broken))
    assert result.exit_code == 1
    assert f"{broken}:2: not valid JSON" in result.output  # as in a .jsonl file


def test_export_with_a_filter(env, tmp_path: Path) -> None:
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    result = run(env, "export", "--where", '{"n": {"$gte": 1}}')
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["a"]
    bad = run(env, "export", "--where", '{"n": {"$oops": 1}}')
    assert bad.exit_code != 0
    assert "where.n.$oops" in bad.output


def test_export_takes_the_filter_limits_the_service_takes(env, tmp_path: Path) -> None:
    """It compiled --where with the built-in limits whatever KB_MAX_FILTER_* said."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    wide = json.dumps({"$or": [{"n": i} for i in range(100)]})
    assert "at most 64 conditions" in run(env, "export", "--where", wide).output
    raised = {**env, "KB_MAX_FILTER_CONDITIONS": "200"}
    result = run(raised, "export", "--where", wide)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["a"]
    lowered = {**env, "KB_MAX_FILTER_DEPTH": "1"}
    nested = '{"$and": [{"$or": [{"n": 1}, {"n": 2}]}]}'
    assert "nest at most 1 levels" in run(lowered, "export", "--where", nested).output


def test_export_to_a_file_holds_exactly_the_export(env, tmp_path: Path) -> None:
    """click.File opened the file on the first write: an export of nothing left an old
    file with its contents (and made no new one) while saying 'exported 0 documents'."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    out, new = tmp_path / "out" / "old.jsonl", tmp_path / "out" / "new.jsonl"
    out.parent.mkdir()
    out.write_text('{"id": "OLD", "text": "stale export"}\n')
    out.chmod(0o600)
    for path in (out, new):
        result = run(env, "export", "--where", '{"n": 2}', "-o", str(path))
        assert result.exit_code == 0, result.output
        assert "exported 0 documents" in result.output
        assert path.read_text() == ""
    assert run(env, "export", "--where", '{"n": 1}', "-o", str(out)).exit_code == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["new.jsonl", "old.jsonl"]
    assert out.stat().st_mode & 0o777 == 0o600  # a private file stays private
    dashed = run(env, "export", "--where", '{"n": 1}', "-o", "-")
    assert [json.loads(line)["id"] for line in dashed.stdout.splitlines()] == ["a"]
    long = tmp_path / "out" / ("x" * 240 + ".jsonl")  # too long with the pid and .partial
    assert run(env, "export", "--where", '{"n": 1}', "-o", str(long)).exit_code == 0
    assert [json.loads(line)["id"] for line in long.read_text().splitlines()] == ["a"]


def test_a_failed_export_leaves_the_file_as_it_was(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad filter, a store error half-way or a file that cannot be written: the old file
    keeps its contents, no temporary file stays beside it, one line says why."""
    from kb.errors import StoreUnavailable

    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    out = tmp_path / "out" / "old.jsonl"
    out.parent.mkdir()
    out.write_text("the previous export\n")
    bad = run(env, "export", "--where", '{"n": {"$oops": 1}}', "-o", str(out))
    assert bad.exit_code == 2  # a usage error

    def broken(store: KnowledgeStore, flt: object):
        yield from original(store, flt)
        raise StoreUnavailable("the Chroma server went away")

    original = KnowledgeStore.iter_documents
    monkeypatch.setattr(KnowledgeStore, "iter_documents", broken)
    failed = run(env, "export", "-o", str(out))
    assert failed.exit_code == 1
    assert isinstance(failed.exception, SystemExit)  # a message, not a traceback
    assert "export failed: the Chroma server went away" in failed.output
    assert out.read_text() == "the previous export\n"
    assert [p.name for p in out.parent.iterdir()] == ["old.jsonl"]
    missing = tmp_path / "nowhere" / "x.jsonl"
    failed = run(env, "export", "-o", str(missing))
    assert failed.exit_code == 1
    assert isinstance(failed.exception, SystemExit)
    assert f"export failed: cannot write {missing}: No such file or directory" in failed.output


def empty_backup(folder: Path) -> Path:
    """A backup of no records (its header alone)."""
    header = {"format": "kb-backup/1", "model": "m", "dim": 384, "fingerprint": "f"}
    path = folder / "empty.jsonl.gz"
    path.write_bytes(
        gzip.compress(json.dumps({**header, "records": 0, "min_score": None}).encode())
    )
    return path


def test_a_store_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """StoreLock made the directory: a KB_CHROMA_PATH naming a file was a FileExistsError
    traceback."""
    path = tmp_path / "a-file"
    path.write_text("x")
    source = write_jsonl(tmp_path / "src.jsonl", GOOD)
    for store in (path, path / "db"):
        result = run({"KB_CHROMA_PATH": str(store)}, "load", str(source))
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit)
        assert f"cannot open the store at {store} (KB_CHROMA_PATH): " in result.output
    restored = run({"KB_CHROMA_PATH": str(path)}, "restore", str(empty_backup(tmp_path)))
    assert restored.exit_code == 1
    assert "(KB_CHROMA_PATH): it is a file, not a directory" in restored.output
    assert path.read_text() == "x"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ('{"$and": [' * 3000 + '{"n": 1}' + "]}" * 3000, "deeper than 200 levels"),
        ('{"n": "\\ud800"}', "n: holds a lone UTF-16 surrogate"),
        ("null", "'--where': must be a JSON object (got null)"),  # it exported everything
        ("[1]", "'--where': must be a JSON object (got an array)"),
    ],
)
def test_export_refuses_a_where_too_deep_with_a_surrogate_or_not_an_object(
    env, where: str, message: str
) -> None:
    result = run(env, "export", "--where", where)
    assert result.exit_code == 2  # a usage error (it was 1)
    assert message in result.output, result.output
    assert "not valid JSON" not in result.output  # it is JSON, one kb cannot take


def test_load_through_the_api_with_url(live_server: str, tmp_path: Path) -> None:
    from kb.client import KBClient

    source = write_jsonl(tmp_path / "docs.jsonl", [*GOOD, {"id": "bad"}])
    env = {"KB_CHROMA_PATH": str(tmp_path / "unused")}
    first = run(env, "load", "--url", live_server, str(source))
    assert first.exit_code == 1
    assert "docs.jsonl:4: text:" in first.output
    assert "added 3, updated 0, skipped 0, failed 1" in first.output
    again = run(env, "load", "--url", live_server, str(source))
    assert "added 0, updated 0, skipped 3, failed 1" in again.output
    client = KBClient(live_server)
    assert client.health().documents == 3
    assert client.get("a").metadata == {"n": 1}
    assert client.query("alpha", top_k=1).matches[0].id == "a"
    assert not (tmp_path / "unused").exists()


def test_load_through_the_api_keeps_each_request_under_the_body_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches were cut by count only: texts of 140k characters made one request past the
    service's body limit, refused with 413, and nothing loaded. Scaled down here: a 64 kB
    limit on the service, which this side learns from GET /info with its text limit (it used
    its own settings': 16 MB and 200k characters here), and texts of 20k characters."""
    from tests.live import Service

    limits = {"KB_MAX_REQUEST_BYTES": "65536", "KB_MAX_TEXT_CHARS": "25000"}
    service = Service(tmp_path / "db", tmp_path / "serve.log", **limits).start()
    try:
        records = [{"id": f"big{i}", "text": f"Note {i} " + "word " * 4000} for i in range(12)]
        source = write_jsonl(tmp_path / "big.jsonl", records)
        result = run({}, "load", "--url", service.base, str(source))
        assert result.exit_code == 0, result.output
        assert "added 12, updated 0, skipped 0, failed 0" in result.output

        def mixed(name: str) -> Path:
            small = [{"id": f"{name}{i}", "text": f"Small note number {i}"} for i in range(6)]
            small.insert(3, {"id": f"{name}-huge", "text": "é" * 12_000})  # \u00e9 in JSON
            small.insert(5, {"id": f"{name}-long", "text": "word " * 5_200})
            return write_jsonl(tmp_path / f"{name}.jsonl", small)

        # documents no request can carry, or the service takes, are failed records; the
        # load goes on (each stopped it: 413 and 422 for the whole batch)
        result = run({}, "load", "--url", service.base, "--batch-size", "1", str(mixed("m")))
        assert result.exit_code == 1
        assert "m.jsonl:4: the document is 72,0" in result.output
        assert (
            "m.jsonl:6: text: text has 26000 characters; at most 25000 (KB_MAX_TEXT_CHARS)"
            in result.output
        )
        assert "added 6, updated 0, skipped 0, failed 2" in result.output
        # a service that does not tell its limits: the refused request stops the load; the
        # one sent after it was written too, and said so; nothing after it was sent
        monkeypatch.setattr("kb.cli.data._with_service_limits", lambda settings, *_: settings)
        stopped = run({}, "load", "--url", service.base, "--batch-size", "1", str(mixed("s")))
        assert stopped.exit_code == 1
        assert "load stopped: the request body is larger than the limit" in stopped.output
        assert "added 4, updated 0, skipped 0, failed 0" in stopped.output
    finally:
        service.stop()


def test_url_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    result = run({}, "load", "--url", "http://127.0.0.1:9", str(source))
    assert result.exit_code != 0
    assert "cannot reach http://127.0.0.1:9" in result.output
    assert "may have been written" not in result.output  # refused: nothing was sent


def test_a_service_gone_while_it_held_a_request_is_said_to_have_maybe_written_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kb serve killed mid-request: the load said "added 384" while the 1,024 documents of
    the request in flight were stored too. (Its GET /info left unanswered ends the load
    before it sends anything: the test below.)"""
    import socket
    import threading

    from tests.test_client import hang_up_server

    monkeypatch.setattr("kb.cli.data._with_service_limits", lambda settings, *_: settings)
    source = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        stop = threading.Event()
        thread = threading.Thread(target=hang_up_server, args=(server, stop))
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.getsockname()[1]}"
            result = run({}, "load", "--url", url, str(source))
        finally:
            stop.set()
            thread.join()
    assert result.exit_code == 1
    assert "load stopped: cannot reach" in result.output
    assert "may have been written before the service went away" in result.output


def test_a_second_ctrl_c_quits_a_url_load_at_once_though_its_request_hangs(
    tmp_path: Path,
) -> None:
    """The service stopped answering mid-load: a second Ctrl-C waited for the request in
    flight to time out (116.7 s), then exited 130 (review helper 65)."""
    import socket

    source = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    held: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        gone = b'{"error": {"code": "not_found", "message": "Not Found", "details": []}}'

        def serve() -> None:  # GET /info: 404, an older service; POST /add: never answered
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                held.append(conn)
                if conn.recv(65536).startswith(b"GET /info"):
                    head = "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                    conn.sendall(f"{head}Content-Length: {len(gone)}\r\n\r\n".encode() + gone)
                    conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
        load = subprocess.Popen(
            [sys.executable, "-m", "kb", "load", "--url", url, str(source)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            # SIGINT as in a terminal's foreground: a suite started as a script's background
            # job has it ignored, and the load then keeps ignoring it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 60
            while len(held) < 2 and time.monotonic() < deadline:  # /info, then /add
                time.sleep(0.05)
            assert len(held) >= 2, "the load sent no /add"
            load.send_signal(signal.SIGINT)
            time.sleep(1)
            load.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, stderr = load.communicate(timeout=60)
            quit_in = time.monotonic() - started
        finally:
            load.kill()
            load.communicate()  # its pipe closed (a ResourceWarning failed the next test)
            for conn in held:
                conn.close()
    assert load.returncode == 130, stderr
    assert quit_in < 10, quit_in
    assert "Load stopped at once" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["load", "backup"])
def test_a_url_answering_something_not_http_is_one_line_and_at_once(
    tmp_path: Path, command: str
) -> None:
    """A server that is not HTTP (a banner) ended `kb load --url` and `kb backup --url` in
    an http.client.BadStatusLine traceback; an unanswered GET /info was followed by the
    first batch, waiting as long again (review helper 65)."""
    import socket
    import threading

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"

        def banner() -> None:  # every connection, until the test closes the socket
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        thread = threading.Thread(target=banner, daemon=True)
        thread.start()
        result = run({}, *url_command(command, url, tmp_path))
        server.shutdown(socket.SHUT_RDWR)  # ends the accept (a thread left in it failed a
        thread.join(timeout=10)  # later test's setup with its EBADF once the socket closed)
        assert not thread.is_alive()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert f"{url}/" in result.output
    assert "not whole HTTP (BadStatusLine)" in result.output


KEY = "s3cret-key-0123456789abcdef"


def url_command(name: str, url: str, tmp_path: Path) -> list[str]:
    """`kb load` or `kb backup` of a service at `url`."""
    if name == "load":
        return ["load", "--url", url, str(write_jsonl(tmp_path / "docs.jsonl", GOOD))]
    return ["backup", str(tmp_path / "kb.jsonl.gz"), "--url", url]


@pytest.mark.parametrize("command", ["load", "backup"])
@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY + "\r", "has whitespace or a line break around it"),
        (KEY + "é", "holds characters other than printable ASCII without spaces"),
        (KEY + "€", "holds characters other than printable ASCII without spaces"),
    ],
)
def test_an_unusable_key_is_one_line_that_does_not_show_it(
    command: str, key: str, problem: str, tmp_path: Path
) -> None:
    """A key file with Windows line endings (KB_API_KEY="$(cat keyfile)"): a traceback
    ending in `ValueError: Invalid header value b'Bearer <the key>\\r'`."""
    result = run({"KB_API_KEY": key}, *url_command(command, "http://127.0.0.1:9", tmp_path))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert result.output.startswith(f"Error: the API key (--api-key / KB_API_KEY) {problem}")
    assert len(result.output.splitlines()) == 1
    assert KEY not in result.output


@pytest.mark.parametrize("command", ["load", "backup"])
def test_a_service_that_redirects_is_an_error_naming_where_to(command: str, tmp_path: Path):
    """The key went on to wherever the redirect pointed (and /add became a GET)."""
    from tests.test_client import redirecting

    with redirecting(307) as (origin, target, seen):
        result = run({"KB_API_KEY": KEY}, *url_command(command, origin, tmp_path))
    assert result.exit_code == 1
    assert f"the service answered a redirect to {target}/" in result.output
    assert f"use --url {target}" in result.output
    assert seen == []


@pytest.mark.parametrize("command", ["load", "backup"])
@pytest.mark.parametrize(
    ("url", "key", "warned"),
    [
        ("http://kb.example:8000", KEY, "kb.example"),
        ("http://10.1.2.3:8000", KEY, "10.1.2.3"),
        ("http://kb.example:8000", None, None),
        ("https://kb.example", KEY, None),
        ("http://localhost:8000", KEY, None),
        ("http://127.0.0.1:8000", KEY, None),
        ("http://[::1]:8000", KEY, None),
    ],
)
def test_a_key_sent_unencrypted_off_this_machine_is_warned_of_once(
    command: str,
    url: str,
    key: str | None,
    warned: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--api-key went over plain http to any host without a word. Once a command: a load
    makes several requests (GET /info, then its batches)."""
    from kb.client import KBClient, KBClientError

    sent: list[str] = []

    def unreachable(self: KBClient, method: str, path: str, *args: object, **kw: object):
        sent.append(path)
        raise KBClientError(f"cannot reach {self.url}: test", status=0, code="unreachable")

    monkeypatch.setattr(KBClient, "_open", unreachable)  # no request leaves the machine
    env = {"KB_API_KEY": key} if key else {}
    result = run(env, *url_command(command, url, tmp_path))
    assert result.exit_code == 1
    assert sent == (["/info"] if command == "load" else ["/backup"])  # not reached: no /add
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [f"kb: warning: the API key is sent unencrypted to {warned} (use https)"]
    assert KEY not in result.output


def test_duplicates_command_and_on_duplicate_skip(env, tmp_path: Path) -> None:
    records = [
        {"id": "orig", "text": "Gradient descent updates the weights against the gradient."},
        {"id": "other", "text": "Sourdough bread needs a lively starter."},
    ]
    run(env, "load", str(write_jsonl(tmp_path / "a.jsonl", records)))
    copy = [{"id": "copy", "text": "Gradient descent updates weights against the gradient."}]
    skipped = run(
        env, "load", "--on-duplicate", "skip", str(write_jsonl(tmp_path / "b.jsonl", copy))
    )
    assert "added 0, updated 0, skipped 1" in skipped.output
    assert "1 near-duplicate(s) of stored ones" in skipped.output
    again = run(env, "load", str(write_jsonl(tmp_path / "c.jsonl", copy)))  # ignore: not looked for
    assert "added 1," in again.output
    assert "near-duplicate" not in again.output
    listed = run(env, "duplicates")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == "copy\torig\n"
    assert "1 group(s)" in listed.output


def test_calibrate_write_makes_queries_report_a_calibrated_threshold(
    env, tmp_path: Path, embedder
) -> None:
    pairs = [
        {"a": "A feline rested on the rug", "b": "The cat sat on the mat", "label": 1},
        {"a": "How do I boil pasta?", "b": "The stock market fell sharply.", "label": 0},
    ]
    result = run(
        env, "calibrate", "--pairs", str(write_jsonl(tmp_path / "p.jsonl", pairs)), "--write"
    )
    assert result.exit_code == 0, result.output
    assert "stored" in result.output
    from kb.schemas import QueryRequest
    from kb.search import search

    store = stored(env, embedder)
    store.add([DocumentIn(text="The cat sat on the mat")])
    (answer,) = search(store, QueryRequest(query="cat"))
    assert answer.threshold.source == "calibrated"
    (override,) = search(store, QueryRequest(query="cat", min_score=0.1))
    assert override.threshold.source == "request"
    store.close()


def test_progress_bar_shows_share_and_rate() -> None:
    import io

    from kb.progress import Progress

    stream = io.StringIO()
    bar = Progress(200, enabled=True, stream=stream)
    bar.advance(50)
    assert " 25% 50/200 docs" in stream.getvalue()
    assert "docs/s" in stream.getvalue()
    assert "docs/s" in Progress(None, enabled=False).line()
    silent = io.StringIO()
    Progress(10, enabled=False, stream=silent).advance(5)
    assert silent.getvalue() == ""


@pytest.mark.parametrize(
    "command", [["export"], ["backup", "out.jsonl.gz"], ["duplicates"]], ids=lambda c: c[0]
)
def test_reading_commands_refuse_a_store_that_does_not_exist(
    tmp_path: Path, command: list[str]
) -> None:
    """A mistyped KB_CHROMA_PATH created a new empty store there and exported or backed up
    0 documents with rc 0 (an empty backup could then feed restore --replace)."""
    missing, empty = tmp_path / "typo", tmp_path / "empty"
    empty.mkdir()
    args = [str(tmp_path / arg) if arg.endswith(".gz") else arg for arg in command]
    for path, why in ((missing, "does not exist"), (empty, "holds no chroma.sqlite3")):
        result = run({"KB_CHROMA_PATH": str(path)}, *args)
        assert result.exit_code == 1
        assert f"no store at {path} (KB_CHROMA_PATH): the directory {why}" in result.output
    assert not missing.exists()
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "out.jsonl.gz").exists()


@pytest.mark.parametrize(
    "command", [["export"], ["backup", "out.jsonl.gz"], ["duplicates"]], ids=lambda c: c[0]
)
def test_reading_commands_refuse_a_collection_that_does_not_exist(
    env, tmp_path: Path, command: list[str]
) -> None:
    """A mistyped KB_COLLECTION was created and read as an empty knowledge base (rc 0)."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    args = [str(tmp_path / arg) if arg.endswith(".gz") else arg for arg in command]
    result = run({**env, "KB_COLLECTION": "cli_tset"}, *args)
    assert result.exit_code == 1
    assert "no collection 'cli_tset' (KB_COLLECTION) in " in result.output
    assert "its collections: 'cli_test'" in result.output
    assert not (tmp_path / "out.jsonl.gz").exists()
    assert run({**env, "KB_COLLECTION": "cli_tset"}, *args).exit_code == 1  # none created


def test_reading_commands_read_an_existing_store(env, tmp_path: Path) -> None:
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    result = run(env, "backup", str(tmp_path / "b.jsonl.gz"))
    assert result.exit_code == 0, result.output
    assert "backed up 3 records" in result.output


def kb_process(env: dict[str, str], *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`kb ARGS` in a process of its own (real standard streams and signals)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kb", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        text=True,
        **popen,
    )


def test_a_pipe_named_as_a_file_loads_its_records(env, tmp_path: Path) -> None:
    """`kb load /dev/stdin` (or `<(cmd)`, a FIFO) loaded nothing, rc 0: the progress bar's
    estimate read the pipe through first, even with no bar shown."""
    records = "".join(json.dumps(record) + "\n" for record in GOOD)
    loading = kb_process(env, "load", "/dev/stdin", stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = loading.communicate(records, timeout=120)
    assert loading.returncode == 0, err
    assert "added 3, updated 0, skipped 0, failed 0" in err


READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}


def reading_stdin(pid: int) -> bool:
    """Whether a thread of `pid` is blocked reading file descriptor 0 (Linux's
    /proc/PID/task/*/syscall: the call's number, then its first argument)."""
    number = READ_SYSCALL.get(platform.machine())
    if number is None:  # another architecture: the store's file and a wait to go by
        return True
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            if (task / "syscall").read_text().split()[:2] == [number, "0x0"]:
                return True
    return False


def test_a_ctrl_c_while_stdin_is_idle_exits_130_cleanly(env, tmp_path: Path) -> None:
    """`sleep 15 | kb load -` and Ctrl-C: the reader thread, blocked on stdin, held its
    buffer's lock, and the interpreter aborted at exit ("Fatal Python error:
    _enter_buffered_busy ... daemon threads", rc 134). Stdin stays open until kb exits."""
    env = {**env, "KB_ENCODER_PROCESS_MIN_TEXTS": "0"}  # the store opens in this process
    with (tmp_path / "err").open("w+") as errors:
        # SIGINT as in a terminal's foreground: a suite started as a script's background job
        # (`... &`) hands it down ignored, kb load rightly keeps ignoring it, and this test
        # waited 30 s for an exit that never came (it failed so in two full runs here)
        loading = kb_process(
            env,
            "load",
            "-",
            stdin=subprocess.PIPE,
            stderr=errors,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert loading.stdin is not None
        try:
            # the Ctrl-C handler is in place once a thread reads stdin (surer than a fixed
            # wait after the store file appears)
            store = Path(env["KB_CHROMA_PATH"]) / "chroma.sqlite3"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and loading.poll() is None:
                if store.exists() and reading_stdin(loading.pid):
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            loading.send_signal(signal.SIGINT)
            loading.wait(timeout=30)
        finally:
            if loading.poll() is None:
                loading.kill()
            loading.stdin.close()
        errors.seek(0)
        err = errors.read()
    assert "Fatal Python error" not in err
    assert loading.returncode == 130, err
    assert "Load interrupted" in err
    assert "added 0, updated 0, skipped 0, failed 0" in err


def test_no_progress_bar_no_estimate(env, tmp_path: Path, monkeypatch) -> None:
    """The estimate reads every file through once more: only for a bar that is shown."""

    def counted(found: object) -> int:
        raise AssertionError("estimated with no bar to show")

    monkeypatch.setattr("kb.cli.data.estimate", counted)
    result = run(env, "load", str(write_jsonl(tmp_path / "docs.jsonl", GOOD)))
    assert result.exit_code == 0, result.output
    assert "added 3," in result.output


@pytest.mark.parametrize(
    "args",
    [["load", ""], ["load", "--url", "", "docs.jsonl"], ["backup", ""], ["export", "-o", ""]],
    ids=["load", "load-url", "backup", "export"],
)
def test_an_empty_path_or_url_is_a_usage_error(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """`kb load ''` loaded the working directory, recursively; `--url ''` wrote to the local
    store; `backup ''` wrote the whole backup and then failed to write '.'."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "docs.jsonl", GOOD)
    result = run(env, *args)
    assert result.exit_code == 2, result.output
    assert "must not be empty" in result.output or "an empty path names no file" in (result.output)
    assert not Path(env["KB_CHROMA_PATH"]).exists()


def test_an_api_key_without_url_is_warned_of(env, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    result = run(env, "load", "--api-key", "k" * 20, str(source))
    assert result.exit_code == 0, result.output
    assert "kb: warning: --api-key is sent only to a service named by --url" in result.output
    quiet = run({**env, "KB_API_KEY": "k" * 20}, "load", str(source))  # a shell's standing key
    assert "warning" not in quiet.output


def test_backup_to_stdout_is_the_backup_alone_and_summaries_go_to_stderr(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kb backup /dev/stdout > f.gz` put "backed up 3 records ..." inside the gzip (rc 0,
    and restore then said "Not a gzipped file"); `kb backup -` wrote a file named '-'."""
    monkeypatch.chdir(tmp_path)
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    done = run(env, "backup", "-")
    assert done.exit_code == 0, done.output
    assert "backed up 3 records to standard output" in done.stderr
    lines = gzip.decompress(done.stdout_bytes).splitlines()  # no text after the gzip
    assert json.loads(lines[0])["records"] == 3
    dest = tmp_path / "copy.jsonl.gz"
    dest.write_bytes(done.stdout_bytes)
    restored = run({**env, "KB_CHROMA_PATH": str(tmp_path / "copy")}, "restore", str(dest))
    assert restored.exit_code == 0, restored.output
    assert restored.stdout == ""
    assert "restored 3 records from" in restored.stderr


def test_a_restore_of_a_file_that_is_no_backup_creates_no_store(env, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "src.jsonl", GOOD)
    done = run(env, "restore", str(source))
    assert done.exit_code == 1
    assert f"restore failed: {source} is not a readable kb backup" in done.output
    assert not Path(env["KB_CHROMA_PATH"]).exists()


@pytest.mark.parametrize("command", ["export", "duplicates"])
def test_a_stdout_that_cannot_be_written_is_one_line(env, tmp_path: Path, command: str) -> None:
    """`kb export > /dev/full` ended in an OSError traceback (`-o /dev/full` did not)."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", [*GOOD, GOOD[0] | {"id": "a2"}])))
    with open("/dev/full", "w") as full:
        done = kb_process(env, command, stdout=full, stderr=subprocess.PIPE)
        _, err = done.communicate(timeout=120)
    assert done.returncode == 1, err
    assert err.strip().splitlines()[-1] == (
        "Error: cannot write standard output: No space left on device"
    )
    assert "Traceback" not in err
    assert "Exception ignored" not in err


def ctrl_c(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_a_ctrl_c_in_export_or_backup_exits_130_saying_nothing_was_written(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "Aborted!", rc 1."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    monkeypatch.setattr("kb.cli.data._write_documents", ctrl_c)
    monkeypatch.setattr("kb.backup.dump", ctrl_c)
    dest = tmp_path / "out"
    for args, said in [
        (["export", "-o", str(dest)], f"Export interrupted: nothing was written to {dest} (-o)"),
        (["export"], "Export interrupted: what standard output got is part of the export"),
        (["backup", str(dest)], f"Backup interrupted: nothing was written to {dest}"),
        (["backup", "-"], "Backup interrupted: what standard output got is not a whole backup"),
    ]:
        done = run(env, *args)
        assert done.exit_code == 130, done.output
        assert said in done.stderr
    assert not dest.exists()


def test_a_ctrl_c_before_a_load_reads_a_document_exits_130_saying_none_was_written(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the load's own handler (the store opening, the model loading: a second or two),
    a Ctrl-C said click's "Aborted!", rc 1."""
    monkeypatch.setattr("kb.cli.data.open_store", ctrl_c)
    done = run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    assert done.exit_code == 130, done.output
    assert "Load interrupted before it read a document: none was written" in done.stderr
    assert "Aborted!" not in done.output


def test_a_ctrl_c_a_command_does_not_answer_exits_130_naming_it(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any command: "Aborted!" and rc 1 read as a failure to a script (a shell's own Ctrl-C
    status is 130)."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    monkeypatch.setattr("kb.cli.quality.open_store", ctrl_c)
    done = run(env, "duplicates")
    assert done.exit_code == 130, done.output
    assert done.stderr.strip() == "kb duplicates interrupted"


def test_a_ctrl_c_in_restore_says_what_the_store_holds_and_what_to_run(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restore --replace` said only "Aborted!" (rc 1), leaving the store empty."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    dest = tmp_path / "b.jsonl.gz"
    assert run(env, "backup", str(dest)).exit_code == 0
    monkeypatch.setattr("kb.backup._verified", ctrl_c)  # before anything is written
    done = run(env, "restore", "--replace", str(dest))
    assert done.exit_code == 130, done.output
    assert "Restore interrupted before it wrote anything: the store is as it was" in done.stderr
    monkeypatch.undo()
    monkeypatch.setattr("kb.backup._add_to", ctrl_c)  # as it writes beside the store
    monkeypatch.setattr(KnowledgeStore, "restore_records", ctrl_c)  # as it writes in place
    done = run(env, "restore", "--replace", str(dest))  # beside the store (kb.staging)
    assert done.exit_code == 130, done.output
    assert (
        "Restore interrupted: the store is as it was (the records it wrote beside it are "
        "removed when the store is next opened)"
    ) in done.stderr
    done = run({**env, "KB_COLLECTION": "other"}, "restore", str(dest))  # into an empty one
    assert done.exit_code == 130, done.output
    assert (
        "Restore interrupted: collection 'other' is partial (it holds part of the backup, or "
        f"nothing). Run `kb restore --replace {dest}` to restore it whole."
    ) in done.stderr


def test_a_ctrl_c_inside_restores_switch_says_the_backup_is_in_place(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_in_the_switch: None
) -> None:
    """A Ctrl-C as restore --replace switched names said the collection was partial and its
    records deleted, though it held them or the whole backup (review helper 97): it takes
    effect after the two renames and says the backup is in place."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    dest = tmp_path / "b.jsonl.gz"
    assert run(env, "backup", str(dest)).exit_code == 0
    done = run(env, "restore", "--replace", str(dest))
    assert done.exit_code == 130, done.output
    assert (
        "Restore interrupted once the restored records were in the store's place: it holds "
        "the whole backup (its next open removes the records replaced and rebuilds the keyword "
        "index)"
    ) in done.stderr
    monkeypatch.undo()
    exported = run(env, "export")
    assert exported.exit_code == 0, exported.output
    assert len(exported.stdout.splitlines()) == len(GOOD)


# `kb ARGS` in a process of its own whose `target` (module:attribute) touches a file and
# sleeps after its first call: the command is then held where its work is under way
HELD = """
import pathlib, sys, time
from importlib import import_module
from kb.cli import main
ready, target, args = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
module, _, name = target.partition(":")
owner, _, attribute = name.rpartition(".")
holder = getattr(import_module(module), owner) if owner else import_module(module)
original = getattr(holder, attribute)
def held(*given, **named):
    result = original(*given, **named)
    ready.touch()
    time.sleep(300)
    return result
setattr(holder, attribute, held)
main(args, prog_name="kb")
"""

SIGTERMED = {  # command -> where it is held, what it must say
    "backup": ("kb.backup:_line", "Backup interrupted: nothing was written to {dest}"),
    "export": ("kb.cli.data:_write_documents", "Export interrupted: nothing was written to {dest}"),
    "restore": (  # --replace writes beside the store, which is kept (kb.staging)
        "kb.backup:_add_to",
        "Restore interrupted: the store is as it was (the records it wrote beside it are "
        "removed when the store is next opened)",
    ),
}


@pytest.mark.parametrize("command", SIGTERMED)
def test_a_sigterm_stops_backup_export_and_restore_as_a_ctrl_c_does(
    env, tmp_path: Path, command: str
) -> None:
    """SIGTERM (timeout(1), systemd, a container's stop) killed them outright: backup and
    export -o left a new DEST.PID.partial file each time, restore said nothing of the
    collection it had emptied (review helper 81). Now it runs a Ctrl-C's clean-up and
    message, and exits 143 (128 + SIGTERM)."""
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    dest = tmp_path / "out" / ("b.jsonl.gz" if command != "export" else "e.jsonl")
    dest.parent.mkdir()
    if command == "restore":
        assert run(env, "backup", str(dest)).exit_code == 0
        args = ["restore", "--replace", str(dest)]
    else:
        dest.write_text("what DEST held")
        args = [command, str(dest)] if command == "backup" else ["export", "-o", str(dest)]
    before = dest.read_bytes()
    target, said = SIGTERMED[command]
    ready = tmp_path / "ready"
    with (tmp_path / "err").open("w+") as errors:
        held = subprocess.Popen(
            [sys.executable, "-c", HELD, str(ready), target, *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            stderr=errors,
            # as a service manager starts it: a suite run as a script's background job hands
            # signals down ignored (a process that ignores SIGTERM rightly keeps ignoring it)
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while not ready.exists() and held.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.exists(), "the command never reached its writes"
            held.send_signal(signal.SIGTERM)
            held.wait(timeout=60)
        finally:
            if held.poll() is None:
                held.kill()
                held.wait()
        errors.seek(0)
        err = errors.read()
    assert held.returncode == 143, err
    assert said.format(dest=dest) in err
    assert "Traceback" not in err
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no partial file
    assert dest.read_bytes() == before


def test_duplicate_ids_holding_spaces_are_told_apart(env, tmp_path: Path) -> None:
    """The ids of a group were joined by spaces: "my doc 1 my doc 2"."""
    text = "Gradient descent updates the weights against the gradient."
    records = [{"id": "my doc 1", "text": text}, {"id": "my doc 2", "text": text + " "}]
    run(env, "load", str(write_jsonl(tmp_path / "a.jsonl", records)))
    listed = run(env, "duplicates")
    assert listed.exit_code == 0, listed.output
    assert [line.split("\t") for line in listed.stdout.splitlines()] == [["my doc 1", "my doc 2"]]


def test_a_url_that_is_not_a_kb_service_is_one_line(tmp_path: Path) -> None:
    """A web server answering 200 ended `kb load --url` in a pydantic traceback, and `kb
    backup --url` named its temporary file ("y.gz.27209.partial is not a readable kb
    backup")."""
    from tests.test_client import PAGE, answering, serving

    source = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    dest = tmp_path / "y.gz"
    with serving(answering(200, "text/html", PAGE)) as url:
        loaded = run({}, "load", "--url", url, str(source))
        backed = run({}, "backup", "--url", url, str(dest))
    assert loaded.exit_code == 1
    assert loaded.exception is None or isinstance(loaded.exception, SystemExit)
    assert f"Error: load stopped: {url}/add answered HTTP 200 (text/html): not a kb " in (
        loaded.output
    )
    assert backed.exit_code == 1
    assert f"backup failed: {url}/backup answered HTTP 200 (text/html)" in backed.output
    with serving(answering(200, "application/gzip", b"not gzip at all")) as url:
        backed = run({}, "backup", "--url", url, str(dest))
    assert backed.exit_code == 1
    assert f"backup failed: what {url}/backup sent is not a readable kb backup: " in (backed.output)
    assert ".partial" not in backed.output
    assert list(tmp_path.iterdir()) == [source]


@pytest.mark.parametrize("ahead", [False, True], ids=["in-turn", "read-ahead"])
def test_a_ctrl_c_once_the_input_is_all_sent_finishes_the_load(ahead: bool) -> None:
    """`kb load --url`, interrupted after its last batch was sent, said "Load interrupted
    ... Run the same load again to finish it" (rc 130) of a load that was complete."""
    from kb.ingest import ingest
    from kb.loader import Item
    from kb.schemas import AddResponse

    stop = threading.Event()
    items = [Item("in", n, DocumentIn(id=f"d{n}", text=f"note {n}")) for n in range(1, 4)]

    def last_sent(docs: list[DocumentIn]) -> list[DocumentIn]:
        if docs[-1].id == "d3":  # the Ctrl-C lands while the last batch is on its way
            stop.set()
        return docs

    def sink(docs: list[DocumentIn]) -> AddResponse:
        return AddResponse(added=len(docs), ids=[str(d.id) for d in docs])

    summary = ingest(
        items,
        (lambda docs: sink(last_sent(docs))) if not ahead else sink,
        batch_size=1,
        prepare=last_sent if ahead else None,
        in_flight=2,
        stop=stop,
    )
    assert stop.is_set()
    assert summary.added == 3


def test_calibrate_without_pairs_or_queries_is_a_usage_error(env) -> None:
    done = run(env, "calibrate")
    assert done.exit_code == 2  # it was 1, a failure
    assert "give --pairs FILE and/or --queries FOLDER" in done.output


def test_calibrate_write_finds_the_store_in_use_before_the_sweep(
    env, tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It ran the whole sweep, then found the store locked."""
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"a": "x", "b": "y", "label": 1}])
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))

    def swept(*args: object) -> None:
        raise AssertionError("swept before the store was opened")

    monkeypatch.setattr("kb.cli.calibrate._from_pairs", swept)
    holder = stored(env, embedder)
    try:
        done = run(env, "calibrate", "--pairs", str(pairs), "--write")
    finally:
        holder.close()
    assert done.exit_code == 1
    assert "is open in pid" in done.output
    assert "Stop that process first (kb calibrate has no --url)." in done.output


def test_the_lock_hint_names_url_only_for_commands_that_have_it(env, tmp_path: Path, embedder):
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    holder = stored(env, embedder)
    try:
        exported = run(env, "export")
        loaded = run(env, "load", str(tmp_path / "src.jsonl"))
    finally:
        holder.close()
    assert exported.exit_code == 1
    assert "Stop that process first (kb export has no --url)." in exported.output
    assert "--url," not in exported.output
    assert "go through its API (kb load --url, kb backup --url)" in loaded.output


def test_eval_checks_where_its_figures_go_before_it_runs(env, tmp_path: Path) -> None:
    """`--json` to a folder that does not exist failed with a FileNotFoundError traceback
    once the whole evaluation had run."""
    dest = tmp_path / "no-such-folder" / "figures.json"
    done = run(env, "eval", str(tmp_path), "--json", str(dest))
    assert done.exit_code == 1
    assert f"Error: cannot write {dest}: {dest.parent} is not a folder (--json)" in done.output


def test_a_missing_eval_corpus_is_a_usage_error(env, tmp_path: Path) -> None:
    done = run(env, "eval", str(tmp_path), "--corpus", str(tmp_path / "nope"))
    assert done.exit_code == 2
    assert "Invalid value for '--corpus'" in done.output
    assert "does not exist" in done.output


def test_a_store_path_that_is_a_file_is_said_to_be_one_by_reading_commands(
    tmp_path: Path,
) -> None:
    """It said "the directory does not exist" of a file."""
    path = tmp_path / "a-file"
    path.write_text("x")
    for command in (["export"], ["duplicates"], ["backup", str(tmp_path / "b.gz")]):
        done = run({"KB_CHROMA_PATH": str(path)}, *command)
        assert done.exit_code == 1
        assert f"no store at {path} (KB_CHROMA_PATH): it is a file, not a directory" in (
            done.output
        )


def test_several_workers_on_an_embedded_store_point_to_kb_cluster(env) -> None:
    done = run(env, "serve", "--workers", "2")
    assert done.exit_code == 1
    assert "or `kb cluster`, which starts a Chroma server and the workers" in done.output
    assert "make serve-cluster" not in done.output


def test_the_help_says_truly_where_defaults_come_from() -> None:
    """It said every option's default comes from a KB_* variable: not so for cluster's
    --workers, --path and --chroma-port, or load's --batch-size."""
    text = " ".join(run({}, "--help").output.split())
    assert "Every option's default comes from" not in text
    assert "an option that names one, as --port names KB_PORT, overrides it" in text


def test_a_where_the_filter_refuses_names_where(env, tmp_path: Path) -> None:
    run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    done = run(env, "export", "--where", '{"n": {"$gt": "x"}}')
    assert done.exit_code == 2
    assert "Error: Invalid value for '--where': where.n.$gt: 'x' is not a number" in done.output


def test_a_second_ctrl_c_in_a_load_exits_130(env, tmp_path: Path, monkeypatch) -> None:
    """A KeyboardInterrupt (the second Ctrl-C) said "Aborted!", rc 1."""
    monkeypatch.setattr(KnowledgeStore, "commit", ctrl_c)
    done = run(env, "load", str(write_jsonl(tmp_path / "src.jsonl", GOOD)))
    assert done.exit_code == 130, done.output
    assert "Load stopped at once" in done.stderr


def test_kb_cluster_seeds_a_file_named_like_an_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kb cluster --seed -notes.jsonl` handed the seed to kb load without "--", which took
    it for an option (review helper 81)."""
    from kb.cli.serve import _seed

    (tmp_path / "-notes.jsonl").write_text('{"id": "n1", "text": "Seeds sprout in spring."}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KB_CHROMA_PATH", str(tmp_path / "db"))
    _seed(("-notes.jsonl",))
    store = KnowledgeStore.open(Settings(chroma_path=tmp_path / "db"), searching=False)
    try:
        assert store.get("n1").text == "Seeds sprout in spring."
    finally:
        store.close()
