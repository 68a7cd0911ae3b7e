"""Quality: `kb eval` (retrieval figures), `kb duplicates` (near-duplicate documents)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from kb.cli.base import (
    GivenPath,
    NumberRange,
    fail,
    main,
    open_embedder,
    open_store,
    out,
    outside_store,
    stdout_failed,
    warn,
)
from kb.config import Settings
from kb.errors import KBError
from kb.files import check_writable, replacing

if TYPE_CHECKING:
    from kb.evaluation import Dataset


def warn_unmatched(dataset: Dataset) -> None:
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
        warn_unmatched(dataset)
        _note_unscored(dataset)
        opened.append(dataset)
    _warn_unused(datasets, opened, corpus)
    embedder = open_embedder(settings)
    out(
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
            out(
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
    from kb.search import threshold_text

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
    limit = threshold_text(threshold)  # as searches write it: 0.99999 was printed "1.00"
    click.echo(f"{len(found)} group(s) of near-duplicates at score >= {limit}", err=True)
