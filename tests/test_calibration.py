"""Threshold sweeps on labeled pairs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kb.calibration import reaches, read_pairs, recommend, sweep
from kb.cli import main
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import ConfigError
from kb.lock import StoreLock
from kb.schemas import QueryRequest
from kb.search import search
from kb.store import KnowledgeStore


def test_sweep_counts_precision_and_recall() -> None:
    rows = {round(r.threshold, 2): r for r in sweep([0.9, 0.7, 0.4, 0.2], [1, 1, 0, 0])}
    assert rows[0.5].precision == 1.0
    assert rows[0.5].recall == 1.0
    assert rows[0.3].precision == pytest.approx(2 / 3)
    assert rows[0.8].recall == 0.5


def test_recommend_max_f1_or_a_precision_target() -> None:
    rows = sweep([0.9, 0.8, 0.6, 0.5, 0.3], [1, 1, 0, 1, 0])
    best = recommend(rows)
    assert best.f1 == max(r.f1 for r in rows)
    assert 0.3 < best.threshold <= 0.5
    assert recommend(rows, min_precision=1.0).threshold > 0.6


def test_query_sweep_counts_leaks_and_kept_answers() -> None:
    from kb.calibration import query_sweep

    runs = [(["a", "b"], [0.8, 0.3]), (["c"], [0.45]), (["d", "e"], [0.5, 0.2])]
    wanted = [{"a"}, set(), {"e"}]
    low, high = query_sweep(runs, wanted, k=2, thresholds=[0.1, 0.6])
    assert (low.leaked, low.kept) == (1, 2)
    assert (high.leaked, high.kept) == (0, 1)


def test_the_sweeps_pick_before_top_k_cuts() -> None:
    """As the service does: a relevant document ranked below k is shown once the threshold
    drops the ones above it (hybrid order is not score order)."""
    from kb.calibration import query_sweep, shown, shown_sweep

    runs = [(["x", "y", "a"], [0.3, 0.2, 0.5]), (["b", "z"], [0.9, 0.1])]
    wanted = [{"a"}, {"b"}]
    assert shown(runs[0], 1, 0.4) == ["a"]
    (row,) = query_sweep(runs, wanted, k=1, thresholds=[0.4])
    assert row.kept == 2
    rows = {round(r.threshold, 2): r for r in shown_sweep(runs, wanted, k=1)}
    assert (rows[0.0].precision, rows[0.0].recall) == (0.5, 0.5)  # x and b shown
    assert (rows[0.4].precision, rows[0.4].recall) == (1.0, 1.0)  # a and b
    assert (rows[0.6].precision, rows[0.6].recall) == (1.0, 0.5)  # b


BAD_PAIRS = {
    "no b": ('{"a": "x", "label": 1}\n', ":1: 'a' and 'b' must be strings"),
    "broken line 2": ('{"a": "x", "b": "y", "label": 1}\n{bad\n', ":2: not valid JSON"),
    "label as text": ('\n{"a": "x", "b": "y", "label": "1"}\n', ':2: label must be 0 or 1 (got "'),
}


@pytest.mark.parametrize("problem", BAD_PAIRS)
def test_a_bad_pair_line_is_a_config_error_naming_it(tmp_path: Path, problem: str) -> None:
    """Were KeyError, a JSONDecodeError naming 'line 1 column 2' for line 2, a ValueError."""
    text, message = BAD_PAIRS[problem]
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}{message}")):
        read_pairs(path)


def test_blank_lines_and_integral_labels_are_read(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('\n{"a": "x", "b": "y", "label": 1.0}\n\n{"a": "x", "b": "z", "label": 0}\n\n')
    assert [p.label for p in read_pairs(path)] == [1, 0]


def test_a_precision_no_threshold_reaches_is_said() -> None:
    rows = sweep([1.0, 0.6, 0.1], [0, 1, 0])  # the best score is a negative
    best = recommend(rows, min_precision=1.0)
    assert not reaches(best, 1.0)
    assert reaches(recommend(rows, min_precision=0.5), 0.5)


def test_a_precision_keeping_everything_reaches_recommends_max_f1_not_minus_one() -> None:
    """The lowest threshold reaching it was -1, which drops nothing, and --write stored it
    (review helper 73: --precision 0.5 on data/eval/pairs.jsonl, whose base rate is 0.531)."""
    rows = sweep([0.9, 0.8, 0.6, 0.5, 0.3], [1, 1, 0, 1, 0])  # precision 0.6 at -1
    assert recommend(rows, min_precision=0.5) == recommend(rows)
    assert recommend(rows, min_precision=0.5).threshold > 0.3


def calibrate(tmp_path: Path, *args: str) -> Result:
    env = {"KB_CHROMA_PATH": str(tmp_path / "db")}
    return CliRunner().invoke(main, ["calibrate", *args], env=env)


def test_calibrate_write_refuses_a_threshold_missing_the_precision(tmp_path: Path) -> None:
    """It recommended max F1 instead, silently, and --write stored it."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"a": "the cat sat on the mat", "b": "the cat sat on the mat", "label": 0}\n'
        '{"a": "dogs bark loudly", "b": "a canine barking", "label": 1}\n'
        '{"a": "stock prices fell", "b": "quantum chromodynamics", "label": 0}\n'
    )
    result = calibrate(tmp_path, "--pairs", str(pairs), "--precision", "1", "--write")
    assert result.exit_code == 1
    assert "no threshold reaches precision 1.000" in result.output
    assert "not written" in result.output
    assert not (tmp_path / "db").exists()


def test_calibrate_says_a_precision_every_threshold_reaches(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"a": "dogs bark loudly", "b": "a canine barking", "label": 1}\n'
        '{"a": "the cat sat on the mat", "b": "a cat sitting on a rug", "label": 1}\n'
        '{"a": "stock prices fell", "b": "quantum chromodynamics", "label": 0}\n'
    )
    result = calibrate(tmp_path, "--pairs", str(pairs), "--precision", "0.5")
    assert result.exit_code == 0, result.output
    assert "precision 0.500 needs no threshold: keeping every match gives 0.667" in result.output
    assert "recommended threshold: -1.00" not in result.output


def test_calibrate_errors_are_messages(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"a": "x", "label": 1}\n')
    result = calibrate(tmp_path, "--pairs", str(pairs))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert f"Error: {pairs}:1: 'a' and 'b' must be strings" in result.output


def test_calibrate_write_on_a_store_in_use_is_a_message(tmp_path: Path) -> None:
    """Was a StoreLocked traceback."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"a": "dogs bark", "b": "a dog barking", "label": 1}\n'
        '{"a": "dogs bark", "b": "stock prices fell", "label": 0}\n'
    )
    held = StoreLock(tmp_path / "db")
    try:
        result = calibrate(tmp_path, "--pairs", str(pairs), "--write")
    finally:
        held.release()
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "an embedded store takes one process at a time" in result.output


def test_calibrate_write_on_a_server_names_it_and_reaches_a_running_service(
    tmp_path: Path, server_settings: Settings, embedder: Embedder
) -> None:
    """The message named KB_CHROMA_PATH, unused with a server; and the service's workers,
    which read the collection's settings as they opened, kept their threshold."""
    service = KnowledgeStore.open(server_settings, embedder)
    try:
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text(
            '{"a": "dogs bark", "b": "a dog barking", "label": 1}\n'
            '{"a": "dogs bark", "b": "stock prices fell", "label": 0}\n'
        )
        env = {
            "KB_CHROMA_URL": server_settings.chroma_url or "",
            "KB_COLLECTION": server_settings.collection,
            "KB_LOCK_DIR": str(server_settings.lock_dir),
        }
        result = CliRunner().invoke(main, ["calibrate", "--pairs", str(pairs), "--write"], env=env)
        assert result.exit_code == 0, result.output
        stored = re.search(r"stored (\S+) as the default threshold of collection '(\S+)' in (\S+)",
                           result.output)  # fmt: skip
        assert stored is not None, result.output
        assert stored.group(2, 3) == (server_settings.collection, server_settings.chroma_url)
        request = QueryRequest.model_validate({"query": "dogs", "mode": "dense"})
        threshold = search(service, request)[0].threshold
        assert threshold.source == "calibrated"
        assert f"{threshold.min_score:.2f}" == stored.group(1)
    finally:
        service.close()


def test_calibrate_queries_refuses_a_corpus_record_that_fails(tmp_path: Path) -> None:
    """Such records were left out silently (kb eval refuses the same corpus)."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "seed").mkdir()
    (tmp_path / "eval" / "queries.jsonl").write_text(
        '{"id": "q", "query": "barking", "relevant": ["d"]}\n'
    )
    corpus = tmp_path / "seed" / "docs.jsonl"
    corpus.write_text('{"id": "d", "text": "Dogs bark."}\n{"id": "e", "text": ""}\n')
    result = calibrate(tmp_path, "--queries", str(tmp_path / "eval"))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"could not be loaded: {corpus}:2: text" in result.output


def test_pairs_may_start_with_a_byte_order_mark_and_may_not_hold_lone_surrogates(
    tmp_path: Path,
) -> None:
    """Notepad's UTF-8 files start with a BOM (the loader skips it; pairs were 'not valid
    JSON'); a "\\ud800" escape reached the tokenizer."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": "x", "b": "y", "label": 1}\n')
    assert [p.label for p in read_pairs(path)] == [1]
    path.write_text('{"a": "x", "b": "\\ud800", "label": 1}\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}:1: b: holds a lone UTF-16")):
        read_pairs(path)


NOTHING = "nothing to calibrate the threshold on"
DEGENERATE_ROWS = {
    "no examples": ([], [], "keeps a similar pair"),
    "no similar one": ([0.9, 0.2], [0, 0], "keeps a similar pair"),
    "no dissimilar one": ([0.9, 0.2], [1, 1], "lets in a dissimilar pair"),
}


@pytest.mark.parametrize("case", DEGENERATE_ROWS)
def test_recommend_refuses_rows_with_nothing_to_calibrate_on(case: str) -> None:
    """It recommended 1.00 (F1 0 everywhere), which refuses every search, or a threshold
    weighed against no noise at all (-1.00 with a precision target)."""
    scores, labels, missing = DEGENERATE_ROWS[case]
    with pytest.raises(ConfigError, match=f"{NOTHING}: no threshold {missing}"):
        recommend(sweep(scores, labels))
    with pytest.raises(ConfigError, match=NOTHING):
        recommend(sweep(scores, labels), min_precision=0.9)


def test_recommend_refuses_rankings_that_never_show_a_relevant_document() -> None:
    """Relevant ids absent from the rankings (another corpus): recall 0 at every threshold."""
    from kb.calibration import shown_sweep

    rows = shown_sweep([(["x", "y"], [0.8, 0.3])], [{"a"}], k=2)
    with pytest.raises(ConfigError, match=f"{NOTHING}: no threshold keeps a similar pair"):
        recommend(rows)


NO_PAIRS = {
    "empty": ("", "no pairs"),
    "blank lines only": ("\n\n", "no pairs"),
    "all dissimilar": ('{"a": "x", "b": "y", "label": 0}\n', "no pair labeled 1 (similar)"),
    "all similar": ('{"a": "x", "b": "x", "label": 1}\n', "no pair labeled 0 (not similar)"),
}


@pytest.mark.parametrize("case", NO_PAIRS)
def test_calibrate_refuses_pairs_with_nothing_to_calibrate_on(tmp_path: Path, case: str) -> None:
    """`--write` stored 1.00 (exit 0) for an empty file or no similar pair, and every search
    was refused from then on."""
    text, missing = NO_PAIRS[case]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(text)
    result = calibrate(tmp_path, "--pairs", str(pairs), "--write")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert f"Error: {pairs}: {NOTHING}: {missing}" in result.output
    assert "recommended threshold" not in result.output
    assert not (tmp_path / "db").exists()  # nothing written


def queries_folder(root: Path, relevant: list[str]) -> Path:
    """A kb eval folder with one query and its corpus in ../seed."""
    (root / "eval").mkdir(parents=True)
    (root / "seed").mkdir()
    query = {"id": "q", "query": "why do dogs bark", "relevant": relevant}
    (root / "eval" / "queries.jsonl").write_text(json.dumps(query) + "\n")
    (root / "seed" / "docs.jsonl").write_text(
        '{"id": "d", "text": "Dogs bark to warn."}\n{"id": "e", "text": "Bread rises."}\n'
    )
    return root / "eval"


def test_calibrate_refuses_queries_none_of_which_has_an_answer(tmp_path: Path) -> None:
    """`--write` stored 1.00: with no answerable query, F1 is 0 at every threshold."""
    folder = queries_folder(tmp_path, [])
    result = calibrate(tmp_path, "--queries", str(folder), "--write")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    message = f"Error: {folder / 'queries.jsonl'}: {NOTHING}: no query with a relevant document"
    assert message in result.output
    assert not (tmp_path / "db").exists()


def test_calibrate_refuses_queries_whose_answers_no_ranking_holds(tmp_path: Path) -> None:
    """Relevant ids the corpus lacks: the same 1.00, stored."""
    folder = queries_folder(tmp_path, ["not-in-the-corpus"])
    result = calibrate(tmp_path, "--queries", str(folder), "--write")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Error: {folder}: {NOTHING}: no threshold keeps a similar pair" in result.output
    assert not (tmp_path / "db").exists()


def test_a_pair_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """Was a UnicodeDecodeError traceback naming no line."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(
        b'{"a": "x", "b": "y", "label": 1}\n\n{"a": "x", "b": "caf\xe9", "label": 0}\n'
    )
    with pytest.raises(ConfigError, match=re.escape(f"{pairs}:3: not UTF-8 text: byte 0xe9")):
        read_pairs(pairs)
    result = calibrate(tmp_path, "--pairs", str(pairs))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Error: {pairs}:3: not UTF-8 text: byte 0xe9" in result.output


def beir_queries(root: Path, qrels: str) -> Path:
    """A BEIR folder (train split) of three documents and three queries."""
    (root / "qrels").mkdir(parents=True)
    docs = [("d1", "Dogs bark to warn."), ("d2", "Bread rises."), ("d3", "Rivers flood.")]
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs)
    )
    queries = [("q1", "why do dogs bark"), ("q2", "baking bread"), ("q3", "floods")]
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries)
    )
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def test_calibrate_queries_counts_only_grades_above_zero_as_relevant(tmp_path: Path) -> None:
    """Every judged id was taken as relevant: a grade-0 or -1 judgment made its document an
    answer, and a query judged only so an answerable one (kb eval scores grade > 0 only)."""
    folder = beir_queries(tmp_path / "beir", "q1\td1\t1\nq1\td2\t0\nq2\td2\t0\nq3\td3\t-1\n")
    result = calibrate(tmp_path, "--queries", str(folder))
    assert result.exit_code == 0, result.output
    assert "queries: 3 (2 with no answer)" in result.output
    assert re.search(r"0\.30 +\d+ of 2 +[01] of 1\n", result.output)

    folder = beir_queries(tmp_path / "none", "q1\td1\t0\nq2\td2\t-1\n")
    result = calibrate(tmp_path, "--queries", str(folder))
    assert result.exit_code == 1
    assert f"{NOTHING}: no query with a relevant document" in result.output
