"""The kb command line: serve, load, calibrate; a thin front over the service layer."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import click

from kb import __version__
from kb.config import Settings
from kb.errors import KBError
from kb.ingest import Sink
from kb.loader import FORMATS, Options, Problem, estimate, read, sources
from kb.progress import Progress


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group()
@click.version_option(__version__, prog_name="kb")
def main() -> None:
    """kb: a knowledge base that stores text with metadata and searches it by meaning.

    Every option's default comes from a KB_* environment variable (see the README).
    """


@main.command()
@click.option("--host", default=None, help="Interface to bind (KB_HOST).")
@click.option("--port", type=int, default=None, help="Port (KB_PORT).")
@click.option("--threads", type=int, default=None, help="Worker threads (KB_THREADS).")
def serve(host: str | None, port: int | None, threads: int | None) -> None:
    """Serve the REST API with waitress on the configured store."""
    import waitress

    from kb.app import create_app

    overrides = {"host": host, "port": port, "threads": threads}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    try:
        app = create_app(settings)
    except KBError as exc:
        _fail(exc.message)
    click.echo(
        f"kb {__version__} on http://{settings.host}:{settings.port} "
        f"(store {settings.chroma_path}, collection {settings.collection})",
        err=True,
    )
    waitress.serve(
        app, host=settings.host, port=settings.port, threads=settings.threads, ident="kb"
    )


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format; default: from each file's suffix (JSONL otherwise).",
)
@click.option("--text-column", default="text", show_default=True, help="CSV: the text column.")
@click.option("--id-column", default="id", show_default=True, help="CSV: the id column, if any.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=256, show_default=True)
@click.option("--upsert", is_flag=True, help="Replace stored documents whose content changed.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record.")
@click.option("--url", default=None, help="Send batches to a running kb service instead.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def load(
    paths: Sequence[str],
    fmt: str | None,
    text_column: str,
    id_column: str,
    batch_size: int,
    upsert: bool,
    strict: bool,
    url: str | None,
    quiet: bool,
) -> None:
    """Load documents from files, folders or '-' (stdin).

    JSONL/JSON records are {"id"?, "text", "metadata"?}; CSV rows give the text column and
    metadata columns; Markdown/text files are one document each (YAML front matter is
    metadata, the path inside the folder is the id). Records without an id get one derived
    from their text, so loading the same input twice adds nothing.
    """
    from kb.ingest import ingest

    settings = Settings()
    found = sources(paths, fmt)
    options = Options(settings, text_column=text_column, id_column=id_column)
    progress = Progress(estimate(found), enabled=not quiet and sys.stderr.isatty())
    sink, close = _sink(settings, url, "upsert" if upsert else "skip")

    def report(problem: Problem) -> None:
        progress.clear()
        click.echo(f"error: {problem}", err=True)

    entries = (entry for source in found for entry in read(source, options))
    started = time.perf_counter()
    try:
        summary = ingest(
            entries,
            sink,
            batch_size=batch_size,
            strict=strict,
            on_problem=report,
            on_batch=progress.advance,
        )
    except KBError as exc:
        progress.clear()
        _fail(f"load stopped: {exc.message}")
    finally:
        close()
    progress.clear()
    elapsed = time.perf_counter() - started
    click.echo(
        f"added {summary.added}, updated {summary.updated}, skipped {summary.skipped}, "
        f"failed {summary.failed} in {elapsed:.1f}s",
        err=True,
    )
    if summary.failed:
        sys.exit(1)


def _sink(settings: Settings, url: str | None, mode: str) -> tuple[Sink, Callable[[], None]]:
    """Where loaded batches go: the REST API at `url`, or the store itself."""
    if url:
        from kb.client import KBClient

        client = KBClient(url)
        return (lambda docs: client.add(docs, mode)), (lambda: None)  # type: ignore[arg-type]
    from kb.store import KnowledgeStore, WriteMode

    try:
        store = KnowledgeStore.open(settings)
    except KBError as exc:
        _fail(exc.message)
    return (lambda docs: store.add(docs, WriteMode(mode))), store.close


@main.command()
@click.option("--where", "where", default=None, help="A JSON filter, as /query takes it.")
@click.option(
    "-o",
    "--output",
    type=click.File("w", encoding="utf-8"),
    default="-",
    help="File to write (default: standard output).",
)
def export(where: str | None, output: TextIO) -> None:
    """Write documents as JSONL: id, text and metadata exactly as given (chunks joined)."""
    from kb.filters import compile_filter
    from kb.store import KnowledgeStore

    try:
        flt = compile_filter(where=json.loads(where)) if where else compile_filter()
        store = KnowledgeStore.open(Settings())
    except ValueError as exc:
        _fail(f"--where is not valid JSON: {exc}")
    except KBError as exc:
        _fail(exc.message)
    try:
        count = 0
        for doc in store.iter_documents(flt):
            record = {"id": doc.id, "text": doc.text}
            if doc.metadata is not None:
                record["metadata"] = doc.metadata
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    finally:
        store.close()
    click.echo(f"exported {count} documents", err=True)


@main.command()
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--precision",
    type=click.FloatRange(0, 1),
    default=None,
    help="Recommend the lowest threshold reaching this precision instead of max F1.",
)
def calibrate(pairs: str, precision: float | None) -> None:
    """Sweep the similarity threshold over labeled pairs and recommend one."""
    from kb.embeddings import load_embedder
    from kb.evaluation import read_pairs, recommend, sweep

    settings = Settings()
    embedder = load_embedder(settings)
    labeled = read_pairs(pairs)
    a = embedder.embed_queries([p.a for p in labeled])
    b = embedder.embed_documents([p.b for p in labeled])
    scores = [float(x) for x in (a * b).sum(axis=1)]
    rows = sweep(scores, [p.label for p in labeled])
    click.echo(f"{len(labeled)} pairs, {sum(p.label for p in labeled)} similar")
    click.echo(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'f1':>6}")
    shown = [row for row in rows if row.threshold >= 0 and round(row.threshold * 100) % 5 == 0]
    for row in shown:  # negative thresholds keep everything: not worth a line
        click.echo(f"{row.threshold:>9.2f} {row.precision:>9.3f} {row.recall:>7.3f} {row.f1:>6.3f}")
    best = recommend(rows, precision)
    click.echo(
        f"recommended threshold: {best.threshold:.2f} (precision {best.precision:.3f}, "
        f"recall {best.recall:.3f}, f1 {best.f1:.3f})"
    )
