"""`kb calibrate`: sweeps the similarity threshold over labeled pairs or queries, recommends one,
and stores it in the collection (or removes the one stored)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from kb.calibration import NothingToCalibrate, Row, Run, recommend
from kb.cli.base import (
    NumberRange,
    fail,
    main,
    open_embedder,
    open_store,
    out,
    warn,
)
from kb.cli.quality import warn_unmatched
from kb.config import Settings
from kb.errors import KBError

if TYPE_CHECKING:
    from kb.embeddings import Embedder
    from kb.store import KnowledgeStore


@main.command()
@click.option(
    "--pairs",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Labeled sentence pairs (JSONL: a, b, label).",
)
@click.option(
    "--queries",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A kb eval folder (queries.jsonl with relevant ids; corpus in 'seed' beside it).",
)
@click.option(
    "--precision",
    type=NumberRange(0, 1),
    default=None,
    help="Recommend the lowest threshold reaching this precision (of the pairs or shown matches).",
)
@click.option(
    "--leaks",
    type=click.IntRange(0),
    default=0,
    help="With --queries: how many unanswerable queries may still show a match (default 0).",
)
@click.option(
    "--margin",
    type=NumberRange(0, 1),
    default=0.04,
    help="With --queries: added to the lowest threshold leaving at most --leaks unanswerable "
    "queries matched (default 0.04).",
)
@click.option("--write", is_flag=True, help="Store the recommendation as the store's default.")
@click.option(
    "--clear",
    is_flag=True,
    help="Remove the threshold --write stored (KB_MIN_SCORE applies again); nothing else.",
)
def calibrate(
    pairs: str | None,
    queries: str | None,
    precision: float | None,
    leaks: int,
    margin: float,
    write: bool,
    clear: bool,
) -> None:
    """Sweep the similarity threshold over labeled data and recommend one.

    With --queries the recommendation comes from the queries, otherwise from the pairs
    (max F1). From queries: the lowest threshold at which at most --leaks unanswerable
    queries (no relevant document) still show a match, plus --margin; with none in the
    labels, or no such threshold, max F1 of the shown matches, said. With --precision, the
    lowest threshold whose precision reaches it; a target no threshold reaches is said, and
    --write then stores nothing (exit 1). Labels with no similar or no dissimilar example
    stop it (exit 1): nothing to calibrate on. --clear removes the stored threshold.
    """
    if clear:
        _clear_alone()
        _clear_threshold(Settings())
        return
    if not pairs and not queries:
        raise click.UsageError("give --pairs FILE and/or --queries FOLDER")
    _check_leak_options(queries, precision)
    settings = Settings()
    embedder = open_embedder(settings)
    # a store in use (kb serve) is said before the sweep, not after it (locked: a message);
    # one that does not exist yet is made only once there is a threshold to write
    early = write and (settings.chroma_url is not None or settings.chroma_path.exists())
    store = open_store(settings, searching=False, embedder=embedder) if early else None
    best = None
    try:
        if pairs:
            best = _from_pairs(embedder, pairs, precision)
        if queries:
            best = _from_queries(settings, embedder, queries, precision, (leaks, margin))
        assert best is not None
        if write:
            _write_threshold(settings, store, embedder, best, precision)
    except KBError as exc:
        fail(exc.message)
    finally:
        if store is not None:
            store.close()


def _clear_alone() -> None:
    """--clear takes no other option: it sweeps nothing, and stores nothing."""
    ctx = click.get_current_context()
    for param in ctx.command.params:
        name = param.name or ""
        if name != "clear" and ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            raise click.UsageError(f"--clear takes no other option (--{name} given)")


def _clear_threshold(settings: Settings) -> None:
    """Remove the collection's calibrated threshold, announced to the other processes on a
    Chroma server as --write's is; say what was removed, and what applies now."""
    from kb.search import CALIBRATED_KEY, threshold_text

    store = open_store(settings, searching=False, existing=True)  # none made to be cleared
    try:
        where = f"collection '{settings.collection}' in {store.records.location}"
        stored = store.records.settings_value(CALIBRATED_KEY)
        if stored is not None:
            store.set_setting(CALIBRATED_KEY, None)
    except KBError as exc:
        fail(exc.message)
    finally:
        store.close()
    now = f"KB_MIN_SCORE applies ({threshold_text(settings.min_score)} in this environment)"
    if stored is None:
        out(f"no calibrated threshold stored in {where}: {now}")
    else:
        value = threshold_text(stored) if isinstance(stored, int | float) else json.dumps(stored)
        out(f"removed the calibrated threshold {value} of {where}: {now}")


def _check_leak_options(queries: str | None, precision: float | None) -> None:
    """--leaks and --margin place a threshold from --queries, unless --precision does:
    given where they do nothing, a usage error (the recommendation would not be theirs)."""
    ctx = click.get_current_context()
    for name in ("leaks", "margin"):
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            continue
        if not queries:
            raise click.UsageError(f"--{name} applies to --queries only")
        if precision is not None:
            raise click.UsageError(
                f"--{name} does nothing with --precision, which recommends the lowest "
                "threshold reaching that precision: leave one out"
            )


def _from_pairs(embedder: Embedder, path: str, precision: float | None) -> Row:
    from kb.calibration import check_pairs, pair_scores, read_pairs, sweep

    labeled = read_pairs(path)
    out(f"pairs: {len(labeled)}, {sum(p.label for p in labeled)} similar")
    check_pairs(labeled, path)
    rows = sweep(pair_scores(embedder, labeled), [p.label for p in labeled])
    return _table(rows, precision, path)


def _from_queries(
    settings: Settings,
    embedder: Embedder,
    folder: str,
    precision: float | None,
    leak_options: tuple[int, float],
) -> Row:
    from kb.calibration import check_queries, shown_sweep
    from kb.evaluation import absent_warning, load_corpus, open_dataset, rank, temporary_store
    from kb.metrics import relevant_ids
    from kb.search import ranking_depth

    dataset = open_dataset(folder)
    warn_unmatched(dataset)
    # relevant as kb eval counts it: grade > 0; a query judged only 0 or below has no answer
    wanted = [relevant_ids(dataset.qrels[q]) for q in dataset.queries]
    check_queries(wanted, Path(folder) / "queries.jsonl")  # before the corpus is loaded
    # as deep as a search looks (hybrid and keyword read KB_HYBRID_DEPTH a side): the
    # threshold picks each query's top_k from this ranking, as the service does
    depth = ranking_depth(settings, settings.top_k)
    with temporary_store(settings, embedder) as store:
        missing = load_corpus(store, dataset)  # a record that fails stops here, as in kb eval
        if missing:
            warn(absent_warning(dataset, missing))
        ranked = rank(store, list(dataset.queries.values()), top_k=depth)
    runs = [(r.ids, r.scores) for r in ranked]
    unanswerable = sum(not w for w in wanted)
    out(
        f"queries: {len(wanted)} ({unanswerable} with no answer), up to {settings.top_k} "
        f"matches each from the best {depth} (precision: of the matches shown; recall: of "
        "the relevant documents in those rankings)"
    )
    rows = shown_sweep(runs, wanted, settings.top_k)
    _print_rows(rows)
    best = _max_f1(rows, precision, folder)
    labeled = _Labeled(runs, wanted, list(dataset.queries), settings.top_k)
    return _per_query(labeled, best, precision, *leak_options)


@dataclass(frozen=True)
class _Labeled:
    """The rankings of the labeled queries, what answers each, and their names."""

    runs: Sequence[Run]
    wanted: Sequence[set[str]]
    names: Sequence[str]
    top_k: int


def _per_query(
    labeled: _Labeled, best: Row, precision: float | None, leaks: int, margin: float
) -> Row:
    """The per-query table and the recommendation: without --precision, the lowest threshold
    leaving at most `leaks` unanswerable queries matched, plus `margin` (max F1 of the shown
    matches, `best`, rewarded showing one match a query, top_k's job: it recommended 0.48 on
    data/eval, which refused no more of them than 0.40 and kept 10 fewer answers)."""
    from kb.calibration import NoLeakPick, leak_pick, query_sweep, shown_rows
    from kb.search import threshold_text

    runs, wanted, k = labeled.runs, labeled.wanted, labeled.top_k
    pick = None
    if precision is None:
        try:
            pick = leak_pick(runs, wanted, k, leaks, margin)
        except NoLeakPick as exc:
            warn(f"{exc}: recommending the best F1 of the shown matches instead")
    if pick is not None:
        (best,) = shown_rows(runs, wanted, k, [pick.at.threshold])
    unanswerable = sum(not w for w in wanted)
    answerable = len(wanted) - unanswerable
    out(f"{'threshold':>9} {'unanswerable still matched':>27} {'answers kept':>13}")
    listed = sorted({0.3, 0.35, 0.4, 0.45, 0.5, best.threshold})
    for row in query_sweep(runs, wanted, k, listed):
        mark = "  (recommended)" if row.threshold == best.threshold else ""
        out(
            f"{threshold_text(row.threshold):>9} {row.leaked:>20} of {unanswerable:<4} "
            f"{row.kept:>6} of {answerable}{mark}"
        )
    _say_unanswerable_best(labeled, leaks)
    if pick is None:
        _say_recommended(best)
    else:
        allowed = "none" if not leaks else f"at most {leaks}"
        chosen = threshold_text(best.threshold)
        out(
            f"recommended threshold: {chosen} ({pick.lowest:.2f}, the lowest "
            f"leaving {allowed} of them matched, + margin {threshold_text(margin)}; precision "
            f"{best.precision:.3f}, recall {best.recall:.3f}, f1 {best.f1:.3f})"
        )
    return best


def _say_unanswerable_best(labeled: _Labeled, leaks: int) -> None:
    """How close the unanswerable queries come: their best score (and, with --leaks N, the
    best past the N allowed), which the threshold must stay above."""
    from kb.calibration import unanswerable_best

    best = unanswerable_best(labeled.runs, labeled.wanted, labeled.names)
    if not best:
        return
    line = f"best score of an unanswerable query: {best[0][0]:.3f} ({best[0][1]})"
    if leaks and leaks < len(best):
        score, name = best[leaks]
        line += f"; with --leaks {leaks}, the threshold must pass the next: {score:.3f} ({name})"
    out(line)


def _write_threshold(
    settings: Settings,
    store: KnowledgeStore | None,
    embedder: Embedder,
    best: Row,
    precision: float | None,
) -> None:
    """Store the recommendation in `store` (or the configured store, opened and closed
    here), unless it misses the precision asked for: a default that quietly lets through
    more noise than the user said they accept is worse than none."""
    from kb.calibration import reaches
    from kb.search import CALIBRATED_KEY, threshold_text

    if precision is not None and not reaches(best, precision):
        fail(f"not written: no threshold reaches precision {precision:.3f}")
    target = store or open_store(settings, searching=False, embedder=embedder)
    try:
        target.set_setting(CALIBRATED_KEY, round(best.threshold, 4))
    finally:
        if store is None:
            target.close()
    out(
        f"stored {threshold_text(best.threshold)} as the default threshold of collection "
        f"'{settings.collection}' in {target.records.location}"
    )


def _table(rows: Sequence[Row], precision: float | None, source: str) -> Row:
    """Print the sweep and return its recommendation (max F1, or --precision)."""
    _print_rows(rows)
    best = _max_f1(rows, precision, source)
    _say_recommended(best)
    return best


def _print_rows(rows: Sequence[Row]) -> None:
    out(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'f1':>6}")
    shown = [row for row in rows if row.threshold >= 0 and round(row.threshold * 100) % 5 == 0]
    for row in shown:  # negative thresholds keep everything: not worth a line
        out(f"{row.threshold:>9.2f} {row.precision:>9.3f} {row.recall:>7.3f} {row.f1:>6.3f}")


def _max_f1(rows: Sequence[Row], precision: float | None, source: str) -> Row:
    """Max F1, or the lowest threshold reaching `precision`; rows nothing can be recommended
    from (see NothingToCalibrate) stop the command naming `source`, before anything is
    written."""
    from kb.calibration import needs_none, reaches

    try:
        best = recommend(rows, precision)
    except NothingToCalibrate as exc:
        fail(f"{source}: {exc.message}")
    if precision is not None and needs_none(rows, precision):
        warn(
            f"precision {precision:.3f} needs no threshold: keeping every match gives "
            f"{rows[0].precision:.3f}; recommending the best F1 instead"
        )
    elif precision is not None and not reaches(best, precision):
        warn(
            f"no threshold reaches precision {precision:.3f} with any recall; "
            "recommending the best F1 instead"
        )
    return best


def _say_recommended(best: Row) -> None:
    out(
        f"recommended threshold: {best.threshold:.2f} (precision {best.precision:.3f}, "
        f"recall {best.recall:.3f}, f1 {best.f1:.3f})"
    )
