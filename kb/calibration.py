"""Threshold calibration: precision, recall and F1 of "score >= t" on labeled scores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from kb import json_input
from kb.embeddings import Embedder
from kb.errors import ConfigError

_NOTHING = "nothing to calibrate the threshold on"


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int  # 1 = similar, 0 = not


@dataclass(frozen=True)
class Row:
    threshold: float
    precision: float
    recall: float
    f1: float


class NothingToCalibrate(ConfigError):
    """Labeled data that cannot place a threshold: with no similar example kept at any
    threshold, F1 is 0 at all of them and max F1 picked 1.00, which refuses every search;
    with no dissimilar one let through, precision is 1 at all of them, so the pick weighs no
    noise (with a precision target: -1.00, which drops nothing)."""


def read_pairs(path: str | Path) -> list[Pair]:
    """Labeled pairs, one JSON object a line; blank lines skipped, a bad line a ConfigError
    naming it."""
    pairs = []
    for where, data in json_input.objects(Path(path)):
        a, b, label = data.get("a"), data.get("b"), data.get("label")
        if not isinstance(a, str) or not isinstance(b, str):
            raise ConfigError(f"{where}: 'a' and 'b' must be strings (the two texts)")
        if isinstance(label, bool) or label not in (0, 1):  # 1.0 is 1; true is not
            raise ConfigError(f"{where}: label must be 0 or 1 (got {json.dumps(label)})")
        pairs.append(Pair(a, b, int(label)))
    return pairs


def check_pairs(pairs: Sequence[Pair], source: str | Path) -> None:
    """Refuse pairs a threshold cannot be calibrated on, before any is embedded: it needs
    both kinds (see `recommend`)."""
    similar = sum(p.label for p in pairs)
    if not pairs:
        _nothing(source, "no pairs")
    if not similar:
        _nothing(source, "no pair labeled 1 (similar)")
    if similar == len(pairs):
        _nothing(source, "no pair labeled 0 (not similar)")


def check_queries(relevant: Sequence[set[str]], source: str | Path) -> None:
    """Refuse queries none of which has a relevant document, before a corpus is loaded for
    them: no threshold can be told to keep an answer (see `recommend`)."""
    if not any(relevant):
        _nothing(source, "no query with a relevant document")


def _nothing(source: str | Path, missing: str) -> NoReturn:
    raise NothingToCalibrate(f"{source}: {_NOTHING}: {missing}")


def pair_scores(embedder: Embedder, pairs: Sequence[Pair]) -> list[float]:
    """Cosine similarity of each pair, as the service scores a query against a document."""
    a = embedder.embed_queries([p.a for p in pairs])
    b = embedder.embed_documents([p.b for p in pairs])
    return [float(x) for x in (a * b).sum(axis=1)]


def sweep(scores: Sequence[float], labels: Sequence[int], step: float = 0.01) -> list[Row]:
    """Precision, recall and F1 of 'score >= t means similar' for t from -1 to 1."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    rows = []
    for t in _thresholds(step):
        predicted = s >= t
        rows.append(_row(t, int((predicted & y).sum()), int(predicted.sum()), int(y.sum())))
    return rows


def _thresholds(step: float) -> list[float]:
    return [float(t) for t in np.round(np.arange(-1.0, 1.0 + step / 2, step), 4)]


def _row(threshold: float, hits: int, predicted: int, positives: int) -> Row:
    """Precision (1 when nothing is predicted), recall and F1 at one threshold."""
    precision = hits / predicted if predicted else 1.0
    recall = hits / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Row(threshold, precision, recall, f1)


def recommend(rows: Sequence[Row], min_precision: float | None = None) -> Row:
    """Max F1 (the highest threshold among ties), or the lowest reaching min_precision; when
    none reaches it, or every one does (`needs_none`: -1, which drops nothing, was the
    recommendation, and `--write` stored it), max F1 again (check with `reaches`).
    NothingToCalibrate when the rows hold no similar example or no dissimilar one (the
    caller names the input). Rows run from the lowest threshold up."""
    if not any(row.recall > 0 for row in rows):
        raise NothingToCalibrate(f"{_NOTHING}: no threshold keeps a similar pair or relevant match")
    if all(row.precision == 1 for row in rows):
        missing = "no threshold lets in a dissimilar pair or irrelevant match"
        raise NothingToCalibrate(f"{_NOTHING}: {missing}")
    if min_precision is not None and not needs_none(rows, min_precision):
        for row in rows:
            if reaches(row, min_precision):
                return row
    return max(reversed(rows), key=lambda row: row.f1)


def needs_none(rows: Sequence[Row], min_precision: float) -> bool:
    """Whether keeping everything (the lowest threshold, -1) already gives this precision."""
    return reaches(rows[0], min_precision)


def reaches(row: Row, min_precision: float) -> bool:
    """Whether this threshold gives the precision asked for while still keeping something."""
    return row.precision >= min_precision and row.recall > 0


Run = tuple[Sequence[str], Sequence[float]]  # a query's document ids and scores, best first


def shown(ranking: Run, k: int, threshold: float) -> list[str]:
    """What a search shows: the first k documents of the ranking scoring at least the
    threshold (kb.search picks before top_k cuts)."""
    ids, values = ranking
    return [doc for doc, score in zip(ids, values, strict=True) if score >= threshold][:k]


def shown_sweep(
    rankings: Sequence[Run], relevant: Sequence[set[str]], k: int, step: float = 0.01
) -> list[Row]:
    """Precision of the matches a search shows at each threshold t from -1 to 1, and their
    recall of the relevant documents the rankings hold (each ranking as deep as the search
    looks, so a relevant document below the first k counts once the threshold lifts it in).
    A query with no relevant document contributes only negatives. What --precision and the
    fallback of `leak_pick` read: its max F1 rewards showing one match a query, top_k's job,
    not the threshold's (see `leak_pick`)."""
    return shown_rows(rankings, relevant, k, _thresholds(step))


def shown_rows(
    rankings: Sequence[Run], relevant: Sequence[set[str]], k: int, thresholds: Sequence[float]
) -> list[Row]:
    """`shown_sweep` at the thresholds given."""
    pairs = zip(rankings, relevant, strict=True)
    findable = sum(len(set(ids) & wanted) for (ids, _), wanted in pairs)
    rows = []
    for t in thresholds:
        hits = shown_count = 0
        for ranking, wanted in zip(rankings, relevant, strict=True):
            docs = shown(ranking, k, t)
            shown_count += len(docs)
            hits += sum(doc in wanted for doc in docs)
        rows.append(_row(t, hits, shown_count, findable))
    return rows


@dataclass(frozen=True)
class QueryRow:
    threshold: float
    leaked: int  # unanswerable queries that would still show a match
    kept: int  # answerable queries whose relevant document is shown


def query_sweep(
    rankings: Sequence[Run],
    relevant: Sequence[set[str]],
    k: int,
    thresholds: Sequence[float],
) -> list[QueryRow]:
    """Per query, not per match: does an unanswerable query still get an answer, and does an
    answerable one show a relevant document, at each threshold?"""
    rows = []
    for t in thresholds:
        leaked = kept = 0
        for ranking, wanted in zip(rankings, relevant, strict=True):
            docs = shown(ranking, k, t)
            if not wanted:
                leaked += bool(docs)
            else:
                kept += any(doc in wanted for doc in docs)
        rows.append(QueryRow(t, leaked, kept))
    return rows


class NoLeakPick(Exception):
    """Why `leak_pick` cannot place a threshold (the caller recommends max F1 instead)."""


@dataclass(frozen=True)
class LeakPick:
    lowest: float  # the lowest threshold (0.01 grid) leaving at most `leaks` queries matched
    at: QueryRow  # the figures at the recommendation: lowest + margin


def leak_pick(
    rankings: Sequence[Run], relevant: Sequence[set[str]], k: int, leaks: int, margin: float
) -> LeakPick:
    """The threshold's task, per query: the lowest threshold at which at most `leaks` of the
    unanswerable queries (no relevant document) still show a match, plus `margin` (a few
    labeled unanswerable queries bound the scores of unseen ones from below only).
    NoLeakPick when the labels hold no such query, `leaks` allows them all, no threshold up
    to 1 leaves so few matched, or the margin takes it past 1 or past every answer."""
    unanswerable = sum(not wanted for wanted in relevant)
    if not unanswerable:
        raise NoLeakPick("the labels hold no unanswerable query (one with no relevant document)")
    if leaks >= unanswerable:
        raise NoLeakPick(f"--leaks {leaks} allows all {unanswerable} unanswerable queries")
    # one whose ranking is empty (keyword search: no term in common) shows a match at no
    # threshold and bounds nothing: with only such queries the lowest was -1.00, stored for
    # every mode (review helper 106)
    pairs = zip(rankings, relevant, strict=True)
    ranked = sum(not wanted and len(scores) > 0 for (_, scores), wanted in pairs)
    if leaks >= ranked:
        raise NoLeakPick(
            f"{ranked} of the {unanswerable} unanswerable queries rank any document (the others "
            "share no term with the corpus: keyword search)"
            + (f" and --leaks {leaks} allows them" if ranked else "")
            + ": the labels bound no threshold"
        )
    rows = query_sweep(rankings, relevant, k, _thresholds(0.01))
    lowest = next((row for row in rows if row.leaked <= leaks), None)
    if lowest is None:
        raise NoLeakPick(f"even at 1.00, more than {leaks} unanswerable queries show a match")
    threshold = round(lowest.threshold + margin, 4)
    if threshold > 1:
        raise NoLeakPick(f"{lowest.threshold:.2f} plus the margin {margin:.2f} is past 1.00")
    (at,) = query_sweep(rankings, relevant, k, [threshold])
    if not at.kept:
        raise NoLeakPick(f"{threshold:.2f} ({lowest.threshold:.2f} + margin) keeps no answer")
    return LeakPick(lowest.threshold, at)


def unanswerable_best(
    rankings: Sequence[Run], relevant: Sequence[set[str]], names: Sequence[str]
) -> list[tuple[float, str]]:
    """Each unanswerable query's best score and its name, highest first (one whose
    ranking is empty shows nothing at any threshold: left out)."""
    best = [
        (max(scores), name)
        for (_, scores), wanted, name in zip(rankings, relevant, names, strict=True)
        if not wanted and len(scores)
    ]
    return sorted(best, reverse=True)
