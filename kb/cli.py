"""The kb command line: serve, load, calibrate; a thin front over the service layer."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import click

from kb import __version__
from kb.config import Settings
from kb.errors import KBError
from kb.loader import FORMATS, Problem, expand, read
from kb.schemas import AddResponse, DocumentIn


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
    help="Input format; default: from the file suffix (JSONL otherwise).",
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=256, show_default=True)
@click.option("--upsert", is_flag=True, help="Replace stored documents whose content changed.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def load(
    paths: Sequence[str], fmt: str | None, batch_size: int, upsert: bool, strict: bool, quiet: bool
) -> None:
    """Load documents from files, folders or '-' (stdin) into the store.

    Records are JSON objects {"id"?, "text", "metadata"?}; records without an id get one derived
    from their text, so loading the same file twice adds nothing.
    """
    from kb.ingest import ingest
    from kb.store import KnowledgeStore, WriteMode

    settings = Settings()
    mode = WriteMode.UPSERT if upsert else WriteMode.SKIP
    progress = _Progress(enabled=not quiet and sys.stderr.isatty())
    try:
        store = KnowledgeStore.open(settings)
    except KBError as exc:
        _fail(exc.message)

    def sink(docs: Sequence[DocumentIn]) -> AddResponse:
        return store.add(docs, mode)

    def report(problem: Problem) -> None:
        progress.clear()
        click.echo(f"error: {problem}", err=True)

    entries = (entry for path in expand(paths) for entry in read(path, fmt, settings))
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
        _fail(f"load stopped: {exc.message}")
    finally:
        store.close()
    progress.clear()
    elapsed = time.perf_counter() - started
    click.echo(
        f"added {summary.added}, updated {summary.updated}, skipped {summary.skipped}, "
        f"failed {summary.failed} in {elapsed:.1f}s",
        err=True,
    )
    if summary.failed:
        sys.exit(1)


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
    for row in rows[::5]:
        click.echo(f"{row.threshold:>9.2f} {row.precision:>9.3f} {row.recall:>7.3f} {row.f1:>6.3f}")
    best = recommend(rows, precision)
    click.echo(
        f"recommended threshold: {best.threshold:.2f} (precision {best.precision:.3f}, "
        f"recall {best.recall:.3f}, f1 {best.f1:.3f})"
    )


class _Progress:
    """A one-line counter with docs/s on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.done = 0
        self.started = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            click.echo(f"\r{self.done:,} docs  {rate:,.0f} docs/s", nl=False, err=True)

    def clear(self) -> None:
        if self.enabled and self.done:
            click.echo("\r\033[K", nl=False, err=True)
