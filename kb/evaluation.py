"""Retrieval evaluation through the normal pipeline: load a dataset's corpus into a temporary
store with the loader, ask its queries through `search`, score the rankings.

Two dataset layouts are understood:
- BEIR: `corpus.jsonl` (_id, title, text), `queries.jsonl` (_id, text), `qrels/<split>.tsv`;
- kb's own: `queries.jsonl` lines {"id", "query", "relevant": [doc ids]} with the corpus in a
  separate folder (data/eval with data/seed). Queries with no relevant document are kept for
  threshold calibration and left out of the ranking metrics.
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from kb import json_input, text_input
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import ConfigError
from kb.ingest import BATCH_SIZE, ingest
from kb.loader import SUFFIXES, Options, Source, read, sources
from kb.metrics import evaluate, judged
from kb.schemas import QueryRequest, number_or_text
from kb.search import ranking_depth, search
from kb.store import KnowledgeStore, WriteMode

QUERY_BATCH = 64
SHOWN_PROBLEMS = 3  # bad corpus records named in the error
SHOWN_ABSENT = 5  # relevant ids the corpus lacks named in the warning


@dataclass
class Dataset:
    name: str
    corpus: list[Source]
    queries: dict[str, str]  # query id -> text, in file order
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # judged ids queries.jsonl lacks
    beir: bool = False  # a BEIR folder (its own corpus, a qrels split), else a kb eval folder


@dataclass
class Ranked:
    """One query's results: document ids and scores, best first."""

    ids: list[str]
    scores: list[float]


def open_dataset(
    path: str | Path, split: str = "train", corpus: str | Path | None = None
) -> Dataset:
    folder = Path(path)
    if folder.name in ("", ".."):  # "." or "..": the folder's own name names the dataset,
        folder = folder.resolve()  # and its parent holds the seed ("."'s parent is ".")
    if (folder / "corpus.jsonl").is_file():
        return _beir(folder, split)
    if (folder / "queries.jsonl").is_file():
        docs = Path(corpus) if corpus else folder.parent / "seed"
        return _labeled(folder, docs)
    raise ConfigError(f"{folder} is neither a BEIR folder (corpus.jsonl) nor a kb eval folder")


def _beir(folder: Path, split: str) -> Dataset:
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise ConfigError(f"no qrels for split '{split}' ({qrels_file})")
    qrels = _read_qrels(qrels_file)
    queries: dict[str, str] = {}
    lines: dict[str, str] = {}  # a query's file:line
    for where, data in json_input.objects(folder / "queries.jsonl"):
        query_id, text = _field(data, "_id", where), _field(data, "text", where)
        if query_id in qrels:  # asked: blank or given twice, it is refused
            _once(query_id, where, lines)
            queries[query_id] = _asked(text, "text", where)
    # a judged query missing from queries.jsonl cannot be asked: scoring it as a miss
    # (nDCG 0) would lower the figures while the queries column left it out
    unmatched = [query_id for query_id in qrels if query_id not in queries]
    judged = {query_id: qrels[query_id] for query_id in queries}
    corpus = [Source(str(folder / "corpus.jsonl"), "beir")]
    return Dataset(f"{folder.name}/{split}", corpus, queries, judged, unmatched, beir=True)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR's qrels TSV (a header, then query-id, corpus-id, score); blank lines skipped.
    Bytes that are not UTF-8 are kept as kb load keeps them (text_input), so the line holding
    one is named instead of a UnicodeDecodeError traceback."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as stream:
        rows = csv.reader(stream, delimiter="\t")
        for index, row in enumerate(rows):
            where = f"{path}:{rows.line_num}"
            if bad := text_input.undecodable("\t".join(row)):
                raise ConfigError(f"{where}: {bad}")
            if index == 0 or not any(cell.strip() for cell in row):
                continue  # the header, or a blank line
            if len(row) != 3:
                raise ConfigError(f"{where}: expected query-id, corpus-id and score (got {row})")
            query_id, doc_id, score = row
            qrels.setdefault(query_id, {})[doc_id] = _grade(score, where)
    return qrels


def _grade(score: str, where: str) -> int:
    """A relevance grade: an integer, also written as a decimal (1.0, as some exports do),
    spelt as JSON spells numbers (float() also took '1_0' and ' 1')."""
    grade = number_or_text(score)
    if isinstance(grade, str) or not float(grade).is_integer():
        raise ConfigError(f"{where}: score must be an integer grade (got '{score}')")
    return int(grade)


def _field(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a string")
    return value


def _asked(text: str, key: str, where: str) -> str:
    """A query's text, `key` at `where`; a blank one is refused here, not by the search once
    the corpus was loaded (a pydantic traceback)."""
    if not text.strip():
        raise ConfigError(f"{where}: '{key}' is blank: a query must hold some text")
    return text


def _once(query_id: str, where: str, lines: dict[str, str]) -> None:
    """Refuse a query id given twice (the last line was kept, silently); `lines` holds each
    query id's file:line so far."""
    if query_id in lines:
        first = lines[query_id].rpartition(":")[2]
        raise ConfigError(f"{where}: query id '{query_id}' is given twice (first at line {first})")
    lines[query_id] = where


def _labeled(folder: Path, corpus: Path) -> Dataset:
    queries, qrels = {}, {}
    lines: dict[str, str] = {}
    for where, data in json_input.objects(folder / "queries.jsonl"):
        query_id, relevant = _field(data, "id", where), data.get("relevant")
        _once(query_id, where, lines)
        if not isinstance(relevant, list) or not all(isinstance(r, str) for r in relevant):
            raise ConfigError(f"{where}: 'relevant' must be a list of document ids")
        queries[query_id] = _asked(_field(data, "query", where), "query", where)
        qrels[query_id] = dict.fromkeys(relevant, 1)
    found = sources([str(corpus)])
    if not found:  # it scored every query a miss: nDCG 0.000, exit 0
        raise ConfigError(
            f"{corpus}: the corpus folder holds no file kb reads ({', '.join(SUFFIXES)}): "
            "nothing to evaluate on (a kb eval folder's corpus is 'seed' beside it, or --corpus)"
        )
    return Dataset(folder.name, found, queries, qrels)


@contextmanager
def temporary_store(settings: Settings, embedder: Embedder) -> Iterator[KnowledgeStore]:
    with tempfile.TemporaryDirectory(prefix="kb-eval-") as tmp:
        # always embedded: an evaluation must not write into a configured Chroma server
        update = {"chroma_path": Path(tmp), "chroma_url": None, "collection": "kb_eval"}
        scratch = settings.model_copy(update=update)
        store = KnowledgeStore.open(scratch, embedder)
        try:
            yield store
        finally:
            store.close()


def load_corpus(store: KnowledgeStore, dataset: Dataset, batch_size: int = BATCH_SIZE) -> list[str]:
    """Load with the normal loader; a record that fails is a ConfigError naming it (figures
    over part of the corpus would be misleading), and so is a corpus of no document. The
    relevant ids the corpus lacks are returned: each counts as a miss."""
    options = Options(store.settings)
    entries = (entry for source in dataset.corpus for entry in read(source, options))
    summary = ingest(entries, lambda docs: store.add(docs, WriteMode.SKIP), batch_size=batch_size)
    if summary.failed:
        named = "; ".join(str(problem) for problem in summary.problems[:SHOWN_PROBLEMS])
        more = summary.failed - min(len(summary.problems), SHOWN_PROBLEMS)
        named += f"; and {more} more" if more else ""
        raise ConfigError(
            f"{summary.failed} corpus record(s) of {dataset.name} could not be loaded: {named}"
        )
    if not store.count():
        where = ", ".join(source.path for source in dataset.corpus)
        raise ConfigError(f"the corpus of {dataset.name} holds no document ({where})")
    return absent(store, dataset)


def absent(store: KnowledgeStore, dataset: Dataset) -> list[str]:
    """The documents judged relevant that the loaded corpus lacks (a typo, another
    corpus), in judgement order."""
    judgements = (dataset.qrels[query].items() for query in dataset.queries)
    wanted = list(dict.fromkeys(doc for pairs in judgements for doc, grade in pairs if grade > 0))
    found: set[str] = set()  # a document's id is its first chunk's: read without texts
    for start in range(0, len(wanted), 500):
        heads = store.records.get(wanted[start : start + 500], texts=False)
        found.update(head.doc_id for head in heads if head.chunk == 0)
    return [doc_id for doc_id in wanted if doc_id not in found]


def absent_warning(dataset: Dataset, missing: Sequence[str]) -> str:
    """The warning for relevant ids the corpus lacks: how many, and the first few."""
    shown = ", ".join(missing[:SHOWN_ABSENT]) + (", ..." if len(missing) > SHOWN_ABSENT else "")
    were = "id is" if len(missing) == 1 else "ids are"
    return (
        f"{dataset.name}: {len(missing)} relevant document {were} not in the corpus, each "
        f"scored as a miss ({shown})"
    )


CUT, DEEPEST = 10, 100  # the figures' cut-offs: @10, and recall@100


def rank(
    store: KnowledgeStore, texts: Sequence[str], top_k: int = DEEPEST, **options: object
) -> list[Ranked]:
    """Every query through the normal search pipeline with no threshold: the full ranking."""
    ranked: list[Ranked] = []
    for start in range(0, len(texts), QUERY_BATCH):
        batch = list(texts[start : start + QUERY_BATCH])
        request = QueryRequest.model_validate(
            {"queries": batch, "top_k": top_k, "min_score": -1.0, **options}
        )
        for result in search(store, request):
            ranked.append(Ranked([m.id for m in result.matches], [m.score for m in result.matches]))
    return ranked


@dataclass
class Report:
    dataset: str
    mode: str
    documents: int
    queries: int  # scored: those with a relevant document (the figures' average)
    figures: dict[str, float]
    load_seconds: float
    query_seconds: float


class Search(TypedDict, total=False):
    """One search variant's options, as QueryRequest takes them."""

    mode: str
    fusion: str


def variants(modes: Sequence[str], fusions: Sequence[str]) -> list[Search]:
    """The search options to evaluate: each mode, and hybrid once per fusion method."""
    out: list[Search] = []
    for mode in modes:
        if mode == "hybrid":
            out.extend({"mode": mode, "fusion": fusion} for fusion in fusions)
        else:
            out.append({"mode": mode})
    return out


def run_eval(
    store: KnowledgeStore,
    dataset: Dataset,
    searches: Sequence[Search],
    warn: Callable[[str], None] | None = None,
) -> list[Report]:
    """Load the corpus once, then rank every query with each search variant and score it;
    `warn` is told of relevant ids the corpus lacks."""
    started = time.perf_counter()
    missing = load_corpus(store, dataset)
    load_seconds = time.perf_counter() - started
    if missing and warn is not None:
        warn(absent_warning(dataset, missing))
    ids = list(dataset.queries)
    reports = []
    for options in searches:
        began = time.perf_counter()
        texts = [dataset.queries[q] for q in ids]
        ranked = rank(store, texts, **options)
        figures = evaluate({q: r.ids for q, r in zip(ids, ranked, strict=True)}, dataset.qrels)
        if _deeper_at(store, options, DEEPEST) != _deeper_at(store, options, CUT):
            # a search asked for 10 ranks fewer candidates a side than one asked for 100: the
            # @10 figures are those of a top_k 10 search, what the service answers
            ranked = rank(store, texts, top_k=CUT, **options)
            run = {q: r.ids for q, r in zip(ids, ranked, strict=True)}
            at_cut = evaluate(run, dataset.qrels)
            figures |= {name: value for name, value in at_cut.items() if name.endswith("@10")}
        name = "/".join(str(value) for value in options.values())  # dense, hybrid/rrf
        reports.append(
            Report(
                dataset.name,
                name,
                store.count(),
                len(judged(dataset.qrels)),
                figures,
                load_seconds,
                time.perf_counter() - began,
            )
        )
    return reports


def _deeper_at(store: KnowledgeStore, options: Search, top_k: int) -> int:
    """How many documents a side a search for top_k ranks (`search.ranking_depth`); 0 in
    dense mode, whose order does not depend on it."""
    mode = options.get("mode") or store.settings.search_mode
    return 0 if mode == "dense" else ranking_depth(store.settings, top_k)
