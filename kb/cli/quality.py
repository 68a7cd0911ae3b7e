"""Quality: `kb calibrate` (the threshold), `kb eval` (retrieval figures), `kb duplicates`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from kb.calibration import NothingToCalibrate, Row, Run, recommend
from kb.cli.base import (
    GivenPath,
    NumberRange,
    fail,
    main,
    open_embedder,
    open_store,
    outside_store,
    stdout_failed,
    warn,
)
from kb.config import Settings
from kb.errors import KBError
from kb.files import check_writable, replacing

if TYPE_CHECKING:
    from kb.embeddings import Embedder
    from kb.evaluation import Dataset
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
    from kb.search import CALIBRATED_KEY, _threshold_text

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
    now = f"KB_MIN_SCORE applies ({_threshold_text(settings.min_score)} in this environment)"
    if stored is None:
        _out(f"no calibrated threshold stored in {where}: {now}")
    else:
        value = _threshold_text(stored) if isinstance(stored, int | float) else json.dumps(stored)
        _out(f"removed the calibrated threshold {value} of {where}: {now}")


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
    _out(f"pairs: {len(labeled)}, {sum(p.label for p in labeled)} similar")
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
    _warn_unmatched(dataset)
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
    _out(
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
    _out(f"{'threshold':>9} {'unanswerable still matched':>27} {'answers kept':>13}")
    listed = sorted({0.3, 0.35, 0.4, 0.45, 0.5, best.threshold})
    for row in query_sweep(runs, wanted, k, listed):
        mark = "  (recommended)" if row.threshold == best.threshold else ""
        _out(
            f"{row.threshold:>9.2f} {row.leaked:>20} of {unanswerable:<4} "
            f"{row.kept:>6} of {answerable}{mark}"
        )
    _say_unanswerable_best(labeled, leaks)
    if pick is None:
        _say_recommended(best)
    else:
        allowed = "none" if not leaks else f"at most {leaks}"
        _out(
            f"recommended threshold: {best.threshold:.2f} ({pick.lowest:.2f}, the lowest "
            f"leaving {allowed} of them matched, + margin {margin:.2f}; precision "
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
    _out(line)


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
    from kb.search import CALIBRATED_KEY

    if precision is not None and not reaches(best, precision):
        fail(f"not written: no threshold reaches precision {precision:.3f}")
    target = store or open_store(settings, searching=False, embedder=embedder)
    try:
        target.set_setting(CALIBRATED_KEY, round(best.threshold, 4))
    finally:
        if store is None:
            target.close()
    _out(
        f"stored {best.threshold:.2f} as the default threshold of collection "
        f"'{settings.collection}' in {target.records.location}"
    )


def _table(rows: Sequence[Row], precision: float | None, source: str) -> Row:
    """Print the sweep and return its recommendation (max F1, or --precision)."""
    _print_rows(rows)
    best = _max_f1(rows, precision, source)
    _say_recommended(best)
    return best


def _print_rows(rows: Sequence[Row]) -> None:
    _out(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'f1':>6}")
    shown = [row for row in rows if row.threshold >= 0 and round(row.threshold * 100) % 5 == 0]
    for row in shown:  # negative thresholds keep everything: not worth a line
        _out(f"{row.threshold:>9.2f} {row.precision:>9.3f} {row.recall:>7.3f} {row.f1:>6.3f}")


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
    _out(
        f"recommended threshold: {best.threshold:.2f} (precision {best.precision:.3f}, "
        f"recall {best.recall:.3f}, f1 {best.f1:.3f})"
    )


def _out(line: str) -> None:
    """A line of the command's output: one that cannot be written (> /dev/full, a pipe
    closed) is one line (`stdout_failed`), as in kb export; it was a traceback."""
    try:
        click.echo(line)
    except OSError as exc:
        stdout_failed(exc)


def _warn_unmatched(dataset: Dataset) -> None:
    if dataset.unmatched:
        shown = ", ".join(dataset.unmatched[:5]) + (", ..." if len(dataset.unmatched) > 5 else "")
        warn(
            f"{dataset.name}: {len(dataset.unmatched)} judged quer"
            f"{'y is' if len(dataset.unmatched) == 1 else 'ies are'} not in queries.jsonl "
            f"and left out ({shown})"
        )


def _note_unscored(dataset: Dataset) -> None:
    """The queries column counts the queries scored; say how many more were asked."""
    from kb.metrics import judged

    unscored = len(dataset.queries) - len(judged(dataset.qrels))
    if unscored:
        click.echo(
            f"note: {dataset.name}: {unscored} of {len(dataset.queries)} queries have no "
            "relevant document (grade > 0) and are not scored",
            err=True,
        )


def _warn_unused(paths: Sequence[str], opened: Sequence[Dataset], corpus: str | None) -> None:
    """--split is BEIR's and --corpus kb eval folders': given where it does nothing, a
    warning (the figures would otherwise look like those of the split or corpus asked for)."""
    ctx = click.get_current_context()
    split_given = ctx.get_parameter_source("split") is not ParameterSource.DEFAULT
    labeled = [path for path, dataset in zip(paths, opened, strict=True) if not dataset.beir]
    beir = [path for path, dataset in zip(paths, opened, strict=True) if dataset.beir]
    if split_given and labeled:
        warn(
            "--split applies to BEIR folders only, not to the kb eval folder(s) "
            f"{', '.join(labeled)}: scored on all their queries"
        )
    if corpus and beir:
        warn(
            "--corpus applies to kb eval folders only, not to the BEIR folder(s) "
            f"{', '.join(beir)}: each is scored on its own corpus.jsonl"
        )


@main.command("eval")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="train", show_default=True, help="BEIR qrels split.")
@click.option(
    "--corpus",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="For kb eval folders: the corpus folder (default: 'seed' beside each eval folder).",
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["dense", "keyword", "hybrid"]),
    help="Search modes to evaluate (repeatable; default: KB_SEARCH_MODE).",
)
@click.option(
    "--fusion",
    "fusions",
    multiple=True,
    type=click.Choice(["rrf", "score"]),
    help="Hybrid fusion methods to evaluate (repeatable; default: KB_FUSION).",
)
@click.option(
    "--json",
    "json_out",
    type=GivenPath(dir_okay=False),
    default=None,
    callback=outside_store,
    help="Write the figures to this file.",
)
def eval_(
    datasets: Sequence[str],
    split: str,
    corpus: str | None,
    modes: Sequence[str],
    fusions: Sequence[str],
    json_out: str | None,
) -> None:
    """Load each dataset into a temporary store and score the search pipeline on it."""
    from dataclasses import asdict

    from kb.evaluation import open_dataset, run_eval, temporary_store, variants

    if json_out:  # before minutes of evaluation, not after them
        try:
            check_writable(Path(json_out))
        except KBError as exc:
            fail(f"{exc.message} (--json)")
    settings = Settings()
    modes = modes or [settings.search_mode]
    if fusions and "hybrid" not in modes:  # else nothing would use them, and no one be told
        raise click.UsageError(
            f"--fusion applies to hybrid search, and the modes evaluated are "
            f"{', '.join(modes)}: add --mode hybrid"
        )
    searches = variants(modes, fusions or [settings.fusion])
    reports = []
    opened = []
    # every dataset read first: a bad second one fails before minutes go into the first,
    # and the warnings and notes (stderr) come before the table, not between its rows
    for path in datasets:
        try:
            dataset = open_dataset(path, split, corpus)
        except KBError as exc:
            fail(exc.message)
        _warn_unmatched(dataset)
        _note_unscored(dataset)
        opened.append(dataset)
    _warn_unused(datasets, opened, corpus)
    embedder = open_embedder(settings)
    _out(
        f"{'dataset':<16} {'mode':<12} {'docs':>6} {'queries':>7} {'nDCG@10':>8} "
        f"{'MRR@10':>7} {'R@10':>6} {'R@100':>6} {'load s':>7} {'query s':>7}"
    )
    for dataset in opened:
        try:
            with temporary_store(settings, embedder) as store:
                found = run_eval(store, dataset, searches, warn)
        except KBError as exc:  # a bad corpus record too: named, not a traceback
            fail(exc.message)
        for report in found:
            f = report.figures
            _out(
                f"{report.dataset:<16} {report.mode:<12} {report.documents:>6} "
                f"{report.queries:>7} {f['ndcg@10']:>8.3f} {f['mrr@10']:>7.3f} "
                f"{f['recall@10']:>6.3f} {f['recall@100']:>6.3f} "
                f"{report.load_seconds:>7.1f} {report.query_seconds:>7.1f}"
            )
            reports.append(asdict(report))
    if json_out:
        try:
            with replacing(Path(json_out)) as partial:
                partial.write_text(json.dumps(reports, indent=2) + "\n")
        except KBError as exc:
            fail(f"{exc.message} (--json)")


@main.command()
@click.option(
    "--min-score",
    type=NumberRange(-1, 1),
    default=None,
    help="Similarity from which documents count as near-duplicates (KB_DUPLICATE_SCORE).",
)
def duplicates(min_score: float | None) -> None:
    """List groups of near-duplicate documents in the store: one group a line, its ids
    separated by tabs (an id may hold spaces, never a control character)."""
    from kb.duplicates import groups
    from kb.search import _threshold_text

    settings = Settings()
    threshold = settings.duplicate_score if min_score is None else min_score
    store = open_store(settings, searching=False, existing=True)  # Chroma's own index
    try:
        found = groups(store.records, threshold)
    finally:
        store.close()
    try:
        for group in found:
            click.echo("\t".join(group))  # spaces made "my doc 1 my doc 2" ambiguous
        sys.stdout.flush()
    except OSError as exc:  # > /dev/full, a closed pipe
        stdout_failed(exc)
    limit = _threshold_text(threshold)  # as searches write it: 0.99999 was printed "1.00"
    click.echo(f"{len(found)} group(s) of near-duplicates at score >= {limit}", err=True)
