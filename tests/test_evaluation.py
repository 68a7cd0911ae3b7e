"""kb eval: BEIR and kb-format datasets through the normal load and search pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kb.cli import main
from kb.errors import ConfigError
from kb.evaluation import open_dataset

CORPUS = [
    {"_id": "d1", "title": "Pasta", "text": "Boil pasta in salted water until al dente."},
    {"_id": "d2", "title": "Bread", "text": "Knead the dough and let it rise before baking."},
    {"_id": "d3", "title": "Gradient descent", "text": "Step against the gradient of the loss."},
    {"_id": "d4", "title": "B-trees", "text": "Balanced trees keep database indexes shallow."},
]
QUERIES = [
    {"_id": "q1", "text": "how long should spaghetti cook"},
    {"_id": "q2", "text": "how do optimizers minimize a loss function"},
    {"_id": "q3", "text": "an unjudged query"},
]


def beir_folder(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    return root


def docs_folder(root: Path) -> Path:
    """The corpus as a kb eval folder's documents (JSONL of id and text)."""
    root.mkdir()
    (root / "docs.jsonl").write_text(
        "".join(json.dumps({"id": d["_id"], "text": d["text"]}) + "\n" for d in CORPUS)
    )
    return root


def labeled_folder(root: Path) -> Path:
    """A kb eval folder of one query, judged relevant to d1."""
    root.mkdir()
    (root / "queries.jsonl").write_text('{"id": "a", "query": "pasta", "relevant": ["d1"]}\n')
    return root


def test_open_beir_dataset_keeps_judged_queries(tmp_path: Path) -> None:
    dataset = open_dataset(beir_folder(tmp_path / "tiny"), split="test")
    assert dataset.name == "tiny/test"
    assert dataset.queries == {"q1": QUERIES[0]["text"], "q2": QUERIES[1]["text"]}
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d3": 1}}
    with pytest.raises(ConfigError, match="split 'dev'"):
        open_dataset(tmp_path / "tiny", split="dev")


def eval_cli(folder: Path, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """`kb eval FOLDER --split test --json FILE`: its result (exit code 0) and its one report."""
    out = tmp_path / "figures.json"
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    result = CliRunner().invoke(
        main, ["eval", str(folder), "--split", "test", "--json", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    (report,) = json.loads(out.read_text())
    return result, report


def test_kb_eval_prints_and_writes_the_figures(tmp_path: Path) -> None:
    folder = beir_folder(tmp_path / "tiny")
    result, report = eval_cli(folder, tmp_path)
    assert "tiny/test" in result.output
    assert report["documents"] == 4
    assert report["queries"] == 2
    assert report["figures"]["ndcg@10"] == pytest.approx(1.0)
    assert report["figures"]["recall@100"] == 1.0
    assert not (tmp_path / "untouched").exists()  # a temporary store, not the configured one


def test_kb_format_dataset_uses_the_seed_corpus(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "queries.jsonl").write_text(
        '{"id": "a", "query": "x", "relevant": ["ml-001"]}\n'
        '{"id": "b", "query": "y", "relevant": []}\n'
    )
    dataset = open_dataset(folder, corpus=Path(__file__).parent.parent / "data" / "seed")
    assert dataset.qrels == {"a": {"ml-001": 1}, "b": {}}
    assert len(dataset.corpus) == 4


def test_an_evaluation_store_is_embedded_even_with_a_chroma_server_configured(
    tmp_path: Path, embedder
) -> None:
    from kb.config import Settings
    from kb.evaluation import temporary_store

    configured = Settings(chroma_path=tmp_path / "db", chroma_url="http://127.0.0.1:9")
    with temporary_store(configured, embedder) as store:  # :9 is never reached
        assert store.records.mode == "embedded"
        assert store.records.location != str(tmp_path / "db")


def test_decimal_scores_and_blank_lines_are_read(tmp_path: Path) -> None:
    """Crashed with ValueError (int('1.0')), an unpack error (a blank qrels line) and a
    JSONDecodeError (a blank queries line)."""
    folder = beir_folder(tmp_path / "tiny")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1.0\n\nq2\td3\t2\n\n"
    )
    (folder / "queries.jsonl").write_text(
        "\n".join(json.dumps(q) for q in QUERIES[:1]) + "\n\n" + json.dumps(QUERIES[1]) + "\n"
    )
    dataset = open_dataset(folder, split="test")
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    assert list(dataset.queries) == ["q1", "q2"]


BAD_FILES = {
    "decimal grade": ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", ":2: score"),
    # float() took these
    "grade 1_0": ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1_0\n", ":2: score"),
    "two columns": ("qrels/test.tsv", "query-id\tcorpus-id\tscore\n\nq1\td1\n", ":3: expected"),
    "broken query": ("queries.jsonl", '{"_id": "q1", "text": "a"}\n{bad\n', ":2: not valid JSON"),
    "query no text": ("queries.jsonl", '{"_id": "q1"}\n', ":1: 'text' must be a string"),
}


@pytest.mark.parametrize("problem", BAD_FILES)
def test_a_bad_line_is_a_config_error_naming_it(tmp_path: Path, problem: str) -> None:
    name, text, message = BAD_FILES[problem]
    folder = beir_folder(tmp_path / "tiny")
    (folder / name).write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{folder / name}{message}")):
        open_dataset(folder, split="test")


NOT_UTF8 = {
    "query": ("queries.jsonl", b'{"_id": "q1", "text": "a"}\n\n{"_id": "q2", "text": "\xff"}\n', 3),
    "qrels row": ("qrels/test.tsv", b"query-id\tcorpus-id\tscore\nq1\td\xff1\t1\n", 2),
    "qrels header": ("qrels/test.tsv", b"query-id\tcorpus-id\tsc\xffre\nq1\td1\t1\n", 1),
}


@pytest.mark.parametrize("case", NOT_UTF8)
def test_a_line_that_is_not_utf8_is_a_config_error_naming_it(tmp_path: Path, case: str) -> None:
    """Was a UnicodeDecodeError traceback naming no line; worded as kb load words it."""
    name, data, line = NOT_UTF8[case]
    folder = beir_folder(tmp_path / "tiny")
    (folder / name).write_bytes(data)
    message = f"{folder / name}:{line}: not UTF-8 text: byte 0xff"
    with pytest.raises(ConfigError, match=re.escape(message)):
        open_dataset(folder, split="test")


def test_a_kb_format_query_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "queries.jsonl").write_bytes(b'{"id": "a", "query": "caf\xe9", "relevant": []}\n')
    with pytest.raises(ConfigError, match=r"queries\.jsonl:1: not UTF-8 text: byte 0xe9"):
        open_dataset(folder, corpus=tmp_path)


@pytest.mark.parametrize("name", ["queries.jsonl", "qrels/test.tsv", "corpus.jsonl"])
def test_kb_eval_names_a_line_that_is_not_utf8(tmp_path: Path, name: str) -> None:
    """The README's `file:line: problem` and exit 1, not a traceback."""
    folder = beir_folder(tmp_path / "tiny")
    path = folder / name
    before = path.read_bytes()
    bad = b"q1\td\xff\t1\n" if name.endswith(".tsv") else b'{"_id": "x", "text": "\xff"}\n'
    path.write_bytes(before + bad)
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    result = CliRunner().invoke(main, ["eval", str(folder), "--split", "test"], env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    line = len(before.splitlines()) + 1
    assert f"{path}:{line}: not UTF-8 text: byte 0xff" in result.output


def test_a_bad_kb_format_query_line_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "queries.jsonl").write_text('\n{"id": "a", "query": "x", "relevant": "ml-001"}\n')
    with pytest.raises(ConfigError, match=r"queries\.jsonl:2: 'relevant' must be a list"):
        open_dataset(folder, corpus=tmp_path)


def test_judged_queries_missing_from_queries_are_left_out_and_counted(tmp_path: Path) -> None:
    """They were ranked as misses: nDCG fell from 1.0 to 0.5 while 'queries' still said 2."""
    folder = beir_folder(tmp_path / "tiny")
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q8\td2\t1\nq9\td4\t1\n")
    dataset = open_dataset(folder, split="test")
    assert set(dataset.qrels) == set(dataset.queries) == {"q1", "q2"}
    assert dataset.unmatched == ["q8", "q9"]
    result, report = eval_cli(folder, tmp_path)
    assert "2 judged queries are not in queries.jsonl and left out (q8, q9)" in result.output
    assert report["queries"] == 2
    assert report["figures"]["ndcg@10"] == pytest.approx(1.0)


def test_kb_eval_names_a_corpus_record_that_fails(tmp_path: Path) -> None:
    """A ConfigError traceback naming no record: run_eval ran outside the command's try."""
    folder = beir_folder(tmp_path / "tiny")
    with (folder / "corpus.jsonl").open("a") as corpus:
        corpus.write(json.dumps({"_id": "d5", "title": "", "text": ""}) + "\n")
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    result = CliRunner().invoke(main, ["eval", str(folder), "--split", "test"], env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert f"could not be loaded: {folder / 'corpus.jsonl'}:5: text" in result.output


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_a_model_that_does_not_load_is_a_message(tmp_path: Path, command: str) -> None:
    """Was a ConfigError traceback."""
    folder = beir_folder(tmp_path / "tiny")
    args = [str(folder), "--split", "test"] if command == "eval" else ["--queries", str(folder)]
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched"), "KB_MODEL": str(tmp_path / "none")}
    result = CliRunner().invoke(main, [command, *args], env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "KB_MODEL=" in result.output


def test_a_negative_grade_gains_nothing() -> None:
    """It was added as a negative gain: [b(-1), a(1)] scored 0.0 instead of pytrec_eval's
    0.6309, and a ranking of only negatives scored below 0."""
    from kb.metrics import evaluate, ndcg_at

    assert ndcg_at(["b", "a"], {"a": 1, "b": -1}, 10) == pytest.approx(0.63093, abs=1e-5)
    assert ndcg_at(["b", "c", "a"], {"a": 2, "b": -2, "c": -1}, 10) == pytest.approx(0.5)
    figures = evaluate({"q": ["b", "x"]}, {"q": {"a": 1, "b": -1}})
    assert figures["ndcg@10"] == 0.0


def test_the_queries_column_counts_the_queries_scored(tmp_path: Path) -> None:
    """A query judged only 0 (or below) is asked but not scored: 'queries' said 3 while the
    figures averaged 2."""
    folder = beir_folder(tmp_path / "tiny")
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q3\td2\t0\nq3\td4\t-1\n")
    assert len(open_dataset(folder, split="test").queries) == 3
    result, report = eval_cli(folder, tmp_path)
    assert report["queries"] == 2
    assert report["figures"]["ndcg@10"] == pytest.approx(1.0)
    assert re.search(r"tiny/test +\S+ +4 +2 +1\.000", result.output)
    assert "tiny/test: 1 of 3 queries have no relevant document" in result.output
    # the note comes before the table (stderr printed between its header and rows)
    assert result.output.index("have no relevant document") < result.output.index("nDCG@10")


def test_kb_eval_reads_every_dataset_before_it_evaluates_one(tmp_path: Path) -> None:
    """A bad second dataset failed only once the first was loaded and scored (minutes on a
    real corpus)."""
    good = beir_folder(tmp_path / "good")
    bad = beir_folder(tmp_path / "bad")
    (bad / "qrels" / "test.tsv").unlink()
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    result = CliRunner().invoke(main, ["eval", str(good), str(bad), "--split", "test"], env=env)
    assert result.exit_code == 1
    assert "no qrels for split 'test'" in result.output
    assert "nDCG@10" not in result.output  # nothing was evaluated


def test_kb_eval_warns_of_an_option_that_does_nothing_for_a_dataset(tmp_path: Path) -> None:
    """--split picks a BEIR folder's qrels and --corpus a kb eval folder's documents: each
    was silently ignored for the other kind, so the figures looked like the split's or the
    corpus's asked for."""
    beir = beir_folder(tmp_path / "tiny")
    corpus = docs_folder(tmp_path / "docs")
    labeled = labeled_folder(tmp_path / "labeled")
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    args = ["eval", str(beir), str(labeled), "--mode", "keyword"]

    both = CliRunner().invoke(main, [*args, "--split", "test", "--corpus", str(corpus)], env=env)
    assert both.exit_code == 0, both.output
    assert f"--split applies to BEIR folders only, not to the kb eval folder(s) {labeled}" in (
        both.output
    )
    assert f"--corpus applies to kb eval folders only, not to the BEIR folder(s) {beir}" in (
        both.output
    )
    assert both.output.index("warning") < both.output.index("nDCG@10")
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    # --split not given: its default says nothing
    no_split = CliRunner().invoke(main, [*args, "--corpus", str(corpus)], env=env)
    assert no_split.exit_code == 0, no_split.output
    assert "--split applies" not in no_split.output
    assert "--corpus applies" in no_split.output
    alone = CliRunner().invoke(main, ["eval", str(labeled), "--corpus", str(corpus)], env=env)
    assert alone.exit_code == 0, alone.output
    assert "warning" not in alone.output


def test_kb_eval_refuses_a_fusion_no_mode_evaluated_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--fusion with only dense or keyword searches was dropped without a word, and the
    table looked like the fusion's figures."""
    folder = beir_folder(tmp_path / "tiny")
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    args = ["eval", str(folder), "--split", "test", "--fusion", "rrf"]
    dense = CliRunner().invoke(main, [*args, "--mode", "dense", "--mode", "keyword"], env=env)
    assert dense.exit_code == 2
    assert "--fusion applies to hybrid search, and the modes evaluated are dense, keyword" in (
        dense.output
    )
    assert "nDCG@10" not in dense.output
    monkeypatch.setenv("KB_SEARCH_MODE", "keyword")  # the default mode is the one evaluated
    default = CliRunner().invoke(main, args, env=env)
    assert default.exit_code == 2
    assert "the modes evaluated are keyword: add --mode hybrid" in default.output
    hybrid = CliRunner().invoke(main, [*args, "--mode", "hybrid", "--mode", "dense"], env=env)
    assert hybrid.exit_code == 0, hybrid.output
    assert "hybrid/rrf" in hybrid.output


def test_kb_eval_of_the_current_folder_finds_the_seed_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cd data/eval && kb eval .` looked for ./seed ("."'s parent is ".") and named the
    dataset ''."""
    docs_folder(tmp_path / "seed")
    labeled = labeled_folder(tmp_path / "eval")
    monkeypatch.chdir(labeled)
    dataset = open_dataset(".")
    assert dataset.name == "eval"
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    result = CliRunner().invoke(main, ["eval", "."], env=env)
    assert result.exit_code == 0, result.output
    assert re.search(r"^eval +hybrid/score +4 +1 +", result.output, re.M), result.output


def test_the_at_10_figures_are_those_of_a_top_10_search(tmp_path: Path, embedder) -> None:
    """kb eval asked every search for 100 documents, so below KB_HYBRID_DEPTH 100 its @10
    figures came from a deeper fusion than the service's answer to top_k 10 (review helper
    73: every query's top 10 differed at depth 10); recall@100 still reads 100."""
    from kb.config import Settings
    from kb.evaluation import rank, run_eval, temporary_store
    from kb.metrics import evaluate

    data = Path(__file__).parent.parent / "data"
    dataset = open_dataset(data / "eval", corpus=data / "seed")
    settings = Settings(chroma_path=tmp_path / "db", hybrid_depth=10)
    search = {"mode": "hybrid", "fusion": "rrf"}
    with temporary_store(settings, embedder) as store:
        (report,) = run_eval(store, dataset, [search])  # type: ignore[list-item]
        ids = list(dataset.queries)
        texts = [dataset.queries[q] for q in ids]

        def figures(top_k: int) -> dict[str, float]:
            ranked = rank(store, texts, top_k=top_k, **search)
            return evaluate({q: r.ids for q, r in zip(ids, ranked, strict=True)}, dataset.qrels)

        at_10, at_100 = figures(10), figures(100)
    assert at_10["ndcg@10"] != at_100["ndcg@10"]  # the depth matters here
    for name in ("ndcg@10", "mrr@10", "recall@10"):
        assert report.figures[name] == at_10[name], name
    assert report.figures["recall@100"] == at_100["recall@100"]


REFUSED_QUERIES = {
    "kb blank": (
        "queries.jsonl",
        '{"id": "a", "query": "pasta", "relevant": ["d1"]}\n{"id": "b", "query": " \\t", '
        '"relevant": ["d2"]}\n',
        ":2: 'query' is blank: a query must hold some text",
    ),
    "kb twice": (
        "queries.jsonl",
        '{"id": "a", "query": "pasta", "relevant": ["d1"]}\n\n'
        '{"id": "a", "query": "bread", "relevant": ["d2"]}\n',
        ":3: query id 'a' is given twice (first at line 1)",
    ),
    "beir blank": ("queries.jsonl", '{"_id": "q1", "text": ""}\n', ":1: 'text' is blank"),
    "beir twice": (
        "queries.jsonl",
        '{"_id": "q1", "text": "pasta"}\n{"_id": "q1", "text": "spaghetti"}\n',
        ":2: query id 'q1' is given twice (first at line 1)",
    ),
}


@pytest.mark.parametrize("case", REFUSED_QUERIES)
def test_a_blank_or_repeated_query_is_refused_when_the_dataset_is_opened(
    tmp_path: Path, case: str
) -> None:
    """A blank query was a pydantic traceback once the corpus was loaded; a query id given
    twice kept the last line, silently (review helper 81)."""
    name, text, message = REFUSED_QUERIES[case]
    if case.startswith("kb"):
        folder, corpus = labeled_folder(tmp_path / "eval"), docs_folder(tmp_path / "docs")
    else:
        folder, corpus = beir_folder(tmp_path / "tiny"), None
    (folder / name).write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{folder / name}{message}")):
        open_dataset(folder, split="test", corpus=corpus)


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_kb_eval_and_calibrate_name_a_blank_query(tmp_path: Path, command: str) -> None:
    docs_folder(tmp_path / "seed")
    folder = labeled_folder(tmp_path / "eval")
    (folder / "queries.jsonl").write_text('{"id": "a", "query": "   ", "relevant": ["d1"]}\n')
    args = [str(folder), "--mode", "dense"] if command == "eval" else ["--queries", str(folder)]
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    result = CliRunner().invoke(main, [command, *args], env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert f"{folder / 'queries.jsonl'}:1: 'query' is blank" in result.output


def test_a_corpus_of_no_document_is_refused(tmp_path: Path, embedder) -> None:
    """A corpus folder holding no file kb reads (corpus.ndjsonl) scored every query a miss:
    nDCG 0.000, exit 0 (review helper 81)."""
    from kb.config import Settings
    from kb.evaluation import load_corpus, temporary_store

    folder, seed = labeled_folder(tmp_path / "eval"), tmp_path / "seed"
    seed.mkdir()
    (seed / "corpus.ndjsonl").write_text('{"id": "d1", "text": "pasta"}\n')
    message = f"{seed}: the corpus folder holds no file kb reads (.jsonl,"
    with pytest.raises(ConfigError, match=re.escape(message)):
        open_dataset(folder)
    (seed / "corpus.jsonl").write_text("\n")
    dataset = open_dataset(folder)
    with (
        temporary_store(Settings(), embedder) as store,
        pytest.raises(ConfigError, match=re.escape(f"of eval holds no document ({seed}/")),
    ):
        load_corpus(store, dataset)


def test_relevant_ids_the_corpus_lacks_are_warned_of(tmp_path: Path) -> None:
    """They were scored as misses without a word (a typo, D3 for d3)."""
    corpus = docs_folder(tmp_path / "seed")
    folder = labeled_folder(tmp_path / "eval")
    (folder / "queries.jsonl").write_text(
        '{"id": "a", "query": "pasta", "relevant": ["d1", "D3"]}\n'
        '{"id": "b", "query": "bread", "relevant": ["d2", "x1", "D3"]}\n'
    )
    env = {"KB_CHROMA_PATH": str(tmp_path / "untouched")}
    args = [str(folder), "--corpus", str(corpus), "--mode", "keyword"]
    result = CliRunner().invoke(main, ["eval", *args], env=env)
    assert result.exit_code == 0, result.output
    warning = "eval: 2 relevant document ids are not in the corpus, each scored as a miss (D3, x1)"
    assert f"kb: warning: {warning}" in result.output
