"""kb calibrate --queries: the threshold that refuses the unanswerable queries, plus a margin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kb.calibration import NoLeakPick, leak_pick, recommend, shown_sweep
from kb.cli import main
from kb.collection import CALIBRATED_KEY
from kb.config import Settings
from kb.embeddings import Embedder
from kb.store import KnowledgeStore

DOCS = {
    "dogs": "Dogs bark to warn their owners of strangers and to call other dogs.",
    "puppies": "Puppies whine and howl when they are left alone.",
    "bread": "Bread rises because yeast ferments sugar and releases carbon dioxide into the dough.",
    "beer": "Brewers add yeast to malted barley to make beer.",
    "rivers": "Rivers flood when heavy rain or melting snow brings more water than the channel "
    "holds.",
    "dams": "Dams hold back river water to make electricity.",
    "tea": "Green tea is brewed cooler than black tea so that it does not turn bitter.",
}
# each answer beside a hard negative (puppies 0.60, beer 0.62, dams 0.59); tea's answer scores
# 0.482; the unanswerable queries' best: cats 0.316 (puppies), espresso 0.164 (tea)
ANSWERABLE = [
    ("q-dogs", "why do dogs bark", ["dogs"]),
    ("q-yeast", "what does yeast do", ["bread"]),
    ("q-flood", "what makes a river flood", ["rivers"]),
    ("q-tea", "tea", ["tea"]),
]
UNANSWERABLE = [("q-cats", "why do cats purr", []), ("q-espresso", "how strong is espresso", [])]


def labeled(root: Path, queries: list[tuple[str, str, list[str]]]) -> Path:
    """A kb eval folder of these queries, its corpus (DOCS) in ../seed."""
    (root / "eval").mkdir(parents=True)
    (root / "seed").mkdir()
    lines = [json.dumps({"id": i, "query": q, "relevant": r}) for i, q, r in queries]
    (root / "eval" / "queries.jsonl").write_text("\n".join(lines) + "\n")
    docs = [json.dumps({"id": i, "text": t}) for i, t in DOCS.items()]
    (root / "seed" / "docs.jsonl").write_text("\n".join(docs) + "\n")
    return root / "eval"


def calibrate(tmp_path: Path, *args: str) -> Result:
    env = {"KB_CHROMA_PATH": str(tmp_path / "db")}
    return CliRunner().invoke(main, ["calibrate", *args], env=env)


def test_recommends_the_lowest_threshold_refusing_the_unanswerable_plus_the_margin(
    tmp_path: Path, embedder: Embedder
) -> None:
    """Max F1 of the shown matches recommended 0.48 here (it is as high from 0.32 to 0.48,
    and the highest of ties won), and --write stored it: it rewards dropping the hard
    negatives shown beside each answer, top_k's job, and on data/eval kept 10 fewer answers
    than 0.40 while refusing no more unanswerable queries (review helper 99)."""
    folder = labeled(tmp_path, ANSWERABLE + UNANSWERABLE)
    result = calibrate(tmp_path, "--queries", str(folder), "--write")
    assert result.exit_code == 0, result.output
    assert "best score of an unanswerable query: 0.316 (q-cats)" in result.output
    assert re.search(r"\n +0\.36 +0 of 2 +4 of 4  \(recommended\)\n", result.output)
    picked = "0.36 (0.32, the lowest leaving none of them matched, + margin 0.04; precision 0.571"
    assert f"recommended threshold: {picked}" in result.output
    assert "recommended threshold: 0.48" not in result.output
    assert "stored 0.36 as the default threshold" in result.output
    store = KnowledgeStore.open(Settings(chroma_path=tmp_path / "db"), embedder)
    try:
        assert store.records.settings_value(CALIBRATED_KEY) == 0.36
    finally:
        store.close()

    result = calibrate(tmp_path, "--queries", str(folder), "--leaks", "1", "--margin", "0")
    assert result.exit_code == 0, result.output
    assert "with --leaks 1, the threshold must pass the next: 0.164 (q-espresso)" in result.output
    picked = "0.17 (0.17, the lowest leaving at most 1 of them matched, + margin 0.00;"
    assert f"recommended threshold: {picked}" in result.output

    # a margin off the 0.01 grid: 0.325 was said and stored as "0.33" (review helper 106)
    result = calibrate(tmp_path, "--queries", str(folder), "--margin", "0.005", "--write")
    assert result.exit_code == 0, result.output
    picked = "0.325 (0.32, the lowest leaving none of them matched, + margin 0.005;"
    assert f"recommended threshold: {picked}" in result.output
    assert "stored 0.325 as the default threshold" in result.output
    assert "    0.325 " in result.output  # its row in the per-query table


def test_with_no_unanswerable_query_it_says_so_and_recommends_max_f1(tmp_path: Path) -> None:
    """Nothing to refuse: the best F1 of the shown matches, as before, and a warning."""
    folder = labeled(tmp_path, ANSWERABLE)
    result = calibrate(tmp_path, "--queries", str(folder))
    assert result.exit_code == 0, result.output
    warning = (
        "the labels hold no unanswerable query (one with no relevant document): recommending "
        "the best F1 of the shown matches instead"
    )
    assert warning in result.output
    best = re.search(r"recommended threshold: (\S+) \(precision", result.output)
    assert best is not None, result.output
    assert re.search(rf"\n +{re.escape(best.group(1))} +0 of 0 +\d of 4  \(recommended\)\n",
                     result.output)  # fmt: skip
    assert "best score of an unanswerable query" not in result.output


OPTIONS = {
    "leaks without queries": (["--pairs", "PAIRS", "--leaks", "1"], "--leaks applies to --queries"),
    "margin without queries": (
        ["--pairs", "PAIRS", "--margin", "0"],
        "--margin applies to --queries",
    ),
    "leaks with precision": (
        ["--queries", "EVAL", "--precision", "0.8", "--leaks", "0"],
        "--leaks does nothing with --precision",
    ),
    "negative leaks": (["--queries", "EVAL", "--leaks", "-1"], "-1 is not in the range x>=0"),
    "margin past 1": (["--queries", "EVAL", "--margin", "1.5"], "1.5 is not in the range 0<=x<=1"),
    "margin nan": (["--queries", "EVAL", "--margin", "nan"], "'nan' is not a number"),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_leak_options_given_where_they_do_nothing_are_usage_errors(
    tmp_path: Path, case: str
) -> None:
    args, message = OPTIONS[case]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"a": "x", "b": "y", "label": 1}\n')
    (tmp_path / "eval").mkdir()
    named = {"PAIRS": str(pairs), "EVAL": str(tmp_path / "eval")}
    result = calibrate(tmp_path, *[named.get(arg, arg) for arg in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


RUNS = [
    (["a", "x"], [0.7, 0.62]),  # an answer beside a hard negative
    (["b", "y"], [0.65, 0.6]),
    (["c"], [0.45]),
    (["x"], [0.3]),  # unanswerable
]
WANTED = [{"a"}, {"b"}, {"c"}, set()]


def test_leak_pick_places_the_threshold_where_max_f1_does_not() -> None:
    """Max F1 (0.65) drops both hard negatives and the answer at 0.45; the unanswerable
    query scores 0.30, so 0.31 is the lowest threshold refusing it, 0.35 with the margin."""
    assert recommend(shown_sweep(RUNS, WANTED, k=2)).threshold == pytest.approx(0.65)
    pick = leak_pick(RUNS, WANTED, k=2, leaks=0, margin=0.04)
    assert (pick.lowest, pick.at.threshold) == (pytest.approx(0.31), 0.35)
    assert (pick.at.leaked, pick.at.kept) == (0, 3)


FALLBACKS = {
    "no unanswerable query": (RUNS[:3], WANTED[:3], 0, 0.04, "hold no unanswerable query"),
    "leaks allowing them all": (RUNS, WANTED, 1, 0.04, "--leaks 1 allows all 1 unanswerable"),
    "an unanswerable copy": (
        [*RUNS[:3], (["a"], [1.0])],
        WANTED,
        0,
        0.04,
        "even at 1.00, more than 0 unanswerable queries show a match",
    ),
    "margin past 1": (
        [*RUNS[:3], (["x"], [0.98])],
        WANTED,
        0,
        0.04,
        "0.99 plus the margin 0.04 is past 1.00",
    ),
    "margin past every answer": (RUNS, WANTED, 0, 0.5, "0.81 (0.31 + margin) keeps no answer"),
    # keyword mode: an off-topic query sharing no term has an empty ranking; it recommended
    # -0.96, which keeps everything in every mode (review helper 106)
    "every unanswerable ranking empty": (
        [*RUNS[:3], ([], [])],
        WANTED,
        0,
        0.04,
        "0 of the 1 unanswerable queries rank any document",
    ),
}


@pytest.mark.parametrize("case", FALLBACKS)
def test_leak_pick_says_why_it_cannot_place_a_threshold(case: str) -> None:
    runs, wanted, leaks, margin, message = FALLBACKS[case]
    with pytest.raises(NoLeakPick, match=re.escape(message)):
        leak_pick(runs, wanted, k=2, leaks=leaks, margin=margin)
