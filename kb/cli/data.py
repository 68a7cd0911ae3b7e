"""Data in and out: `kb load`, `kb export`, `kb backup`, `kb restore`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from kb.cli.base import (
    API_KEY,
    GivenPath,
    closed_pipe,
    fail,
    interrupted,
    main,
    not_empty,
    open_store,
    outside_store,
    stdout_failed,
    warn,
)
from kb.cli.interrupt import first_ctrl_c_stops, sigterm_as_ctrl_c
from kb.config import Settings
from kb.errors import KBError
from kb.ingest import BATCH_SIZE, FIRST_BATCH, LoadInterrupted, LoadStopped, Prepare, Sink
from kb.loader import (
    FORMATS,
    SUFFIXES,
    Options,
    Problem,
    Source,
    Summary,
    estimate,
    input_bytes,
    once,
    read,
    sources,
)
from kb.progress import Progress

if TYPE_CHECKING:
    from kb.client import KBClient
    from kb.filters import CompiledFilter
    from kb.schemas import DocumentIn
    from kb.store import KnowledgeStore, PreparedAdd

URL_IN_FLIGHT = 2  # kb load --url: requests at a time


@main.command()
@click.argument("paths", nargs=-1, required=True, type=GivenPath(readable=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format; default: from each file's suffix (JSONL otherwise).",
)
@click.option("--text-column", default="text", show_default=True, help="CSV: the text column.")
@click.option(
    "--id-column",
    default=None,
    callback=not_empty,
    help="CSV: the id column, which the header must have (default: id, if it has one).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=BATCH_SIZE,
    show_default=True,
    help=f"Documents per batch (the first {FIRST_BATCH}, doubling up to this).",
)
@click.option("--upsert", is_flag=True, help="Replace stored documents whose content changed.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record.")
@click.option(
    "--on-duplicate",
    type=click.Choice(["ignore", "allow", "skip", "reject"]),
    default="ignore",
    show_default=True,
    help="Records nearly identical to a stored document: not looked for (ignore), written "
    "and counted (allow), left out (skip), or the load stops (reject).",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Markdown/text ids are paths inside this folder (default: inside the folder "
    "named; a file named alone: its name).",
)
@click.option(
    "--url",
    default=None,
    callback=not_empty,
    help="Send batches to a running kb service (its base URL) instead.",
)
@API_KEY
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def load(
    paths: Sequence[str],
    fmt: str | None,
    text_column: str,
    id_column: str | None,
    batch_size: int,
    upsert: bool,
    strict: bool,
    on_duplicate: str,
    root: Path | None,
    url: str | None,
    api_key: str | None,
    quiet: bool,
) -> None:
    """Load documents from files, folders or '-' (stdin).

    JSONL/JSON records are {"id"?, "text", "metadata"?}; CSV rows give the text column and
    metadata columns; Markdown/text files are one document each (YAML front matter is
    metadata, the path inside the folder named or --root is the id; a file named alone, its
    name; from stdin, derived). Folders are read with their subfolders, leaving out hidden
    files and folders (.git) unless named. Records without an id get one derived from their
    text, so loading the same input twice adds nothing.
    """
    from kb.ingest import ingest

    try:  # a Ctrl-C before the first document is read: nothing is written
        settings = Settings()
        client = _client(url, api_key)
        if client is not None:  # documents are checked and requests cut by the service's limits
            settings = _with_service_limits(settings, client)
        listed = sources(paths, fmt, root)
        found, repeated, linked = once(listed)
        if repeated:
            warn(
                "named more than once (or inside a folder also named), read once: "
                + _names(repeated)
            )
        if linked:
            warn(
                "links to a file their folder also holds, left out (the file is read once, "
                "its own path its id): " + _names(linked)
            )
        empty_folders = _without_files(paths, listed)
        for folder in empty_folders:
            warn(
                f"{folder} holds no file kb reads ({', '.join(SUFFIXES)}; or name one with "
                "--format): nothing is loaded from it"
            )
        options = Options(settings, text_column=text_column, id_column=id_column)
        shown = not quiet and sys.stderr.isatty()
        # counted only for a bar shown (estimate reads each file through once more)
        progress = Progress(estimate(found) if shown else None, enabled=shown)
        mode = "upsert" if upsert else "skip"
        target = _target(settings, client, mode, on_duplicate, input_bytes(found))
    except KeyboardInterrupt:
        interrupted("Load interrupted before it read a document: none was written")

    def report(problem: Problem) -> None:
        progress.clear()
        click.echo(f"error: {problem}", err=True)

    entries = (entry for source in found for entry in read(source, options))
    started = time.perf_counter()
    asked_to_stop = threading.Event()
    code, summary = 0, None
    try:
        stops = "the load stops after the batches under way"
        with first_ctrl_c_stops(asked_to_stop, stops, sigterm=True) as asked:
            summary = ingest(
                entries,
                target.sink,
                batch_size=min(batch_size, target.most_docs),
                strict=strict,
                on_problem=report,
                on_batch=progress.advance,
                prepare=target.prepare,
                in_flight=target.in_flight,
                ahead=target.ahead,
                weigh=target.weigh,
                max_weight=target.max_weight,
                stop=asked_to_stop,
                wait_on_quit=not target.remote,
            )
    except LoadStopped as stop:
        # what was written before the failure, and by batches already in flight, is counted
        progress.clear()
        click.echo(f"Error: load stopped: {stop.message}", err=True)
        if stop.unsure:  # only a load by --url has such failures
            which = "request that" if stop.unsure == 1 else f"{stop.unsure} requests that"
            click.echo(
                f"The documents of the {which} failed may have been written before the "
                "service went away (they are not counted below): run the same load again to "
                "finish it; what is stored is skipped.",
                err=True,
            )
        code, summary = 1, stop.summary
    except LoadInterrupted as halted:
        progress.clear()
        click.echo(
            "Load interrupted: the batches under way were written, none after them. Run the "
            "same load again to finish it; what is stored is skipped.",
            err=True,
        )
        code, summary = asked.exit_code, halted.summary  # 130 (Ctrl-C) or 143 (SIGTERM)
    except KeyboardInterrupt:  # a second Ctrl-C: at once, wherever the load was
        progress.clear()
        click.echo(
            "\nLoad stopped at once: the batch being written may or may not have been. Run "
            "the same load again to finish it; what is stored is skipped.",
            err=True,
        )
        code = 130
    except KBError as exc:
        progress.clear()
        click.echo(f"Error: load stopped: {exc.message}", err=True)
        code = 1
    finally:
        target.close()
    progress.clear()
    if summary is not None:
        _summarize(summary, time.perf_counter() - started)
        if summary.failed and not code:
            code = 1
        documents = summary.added + summary.updated + summary.skipped + summary.failed
        if not documents and not code and not empty_folders:
            # `kb export | kb load -` after a failed export: a summary of zeros, rc 0
            named = ["standard input" if path == "-" else path for path in paths]
            warn(f"the input held no documents ({_names(named)}): nothing was loaded")
    _leave(code, reading_stdin="-" in paths)


def _leave(code: int, *, reading_stdin: bool) -> None:
    """End the load with `code`. A reader thread left blocked on standard input (a Ctrl-C
    while `kb load -` waited for input) holds the lock of sys.stdin's buffer, and the
    interpreter's shutdown then aborted ("Fatal Python error: _enter_buffered_busy", exit
    134): the process ends here instead, its output flushed (the store and any encoder
    process are closed by now)."""
    from kb.ingest import READER_THREAD, WRITER_THREAD

    alive = {t.name.partition("_")[0] for t in threading.enumerate() if t.is_alive()}
    blocked = READER_THREAD in alive and reading_stdin and sys.stdin is sys.__stdin__
    # and a second Ctrl-C quits at once: a request to a service that stopped answering is
    # not waited for (the interpreter's exit joins the writer threads: up to its timeout)
    if blocked or (code == 130 and WRITER_THREAD in alive):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def _summarize(summary: Summary, elapsed: float) -> None:
    near = f", {summary.duplicates} near-duplicate(s) of stored ones" if summary.duplicates else ""
    click.echo(
        f"added {summary.added}, updated {summary.updated}, skipped {summary.skipped}, "
        f"failed {summary.failed} in {elapsed:.2f}s{near}",
        err=True,
    )
    if summary.skipped_changed:  # skipped as stored, though they were edited since
        warn(
            f"{summary.skipped_changed} of the skipped documents differ from their stored "
            "version: load again with --upsert to replace them"
        )


@dataclass
class _Target:
    """Where loaded batches go, and how many are prepared and written at a time."""

    sink: Sink
    prepare: Prepare
    close: Callable[[], None]
    in_flight: int = 1  # batches being written at once
    ahead: int = 0  # batches queued on an encoder process beyond the one being written
    most_docs: int = 100_000  # documents per batch at most (a service's per-request limit)
    weigh: Callable[[DocumentIn], int] | None = None  # a document's share of a request body
    max_weight: int | None = None  # the most a batch's documents may weigh together
    remote: bool = False  # a service: a second Ctrl-C does not wait for its requests


def _client(url: str | None, api_key: str | None, timeout: float = 120.0) -> KBClient | None:
    """The client of the service at `url` a command sends to, if any; a clean exit for a URL
    or key it cannot use, and a warning when the key would cross the network unencrypted."""
    if url is None:
        given = click.get_current_context().get_parameter_source("api_key")
        if api_key and given is click.core.ParameterSource.COMMANDLINE:
            warn("--api-key is sent only to a service named by --url: it is not used here")
        return None
    from kb.client import KBClient

    try:
        client = KBClient(url, api_key=api_key, timeout=timeout)
    except KBError as exc:
        if exc.code == "invalid_url":  # a usage error, exit 2 (it was 1)
            raise click.BadParameter(exc.message, param_hint="'--url'") from None
        fail(exc.message)
    if host := client.key_in_the_clear:
        warn(f"the API key is sent unencrypted to {host} (use https)")
    return client


def _with_service_limits(settings: Settings, client: KBClient) -> Settings:
    """`settings` with the request limits of the client's service (GET /info), or as they
    are when it does not tell them: the first request then reports what is wrong."""
    from pydantic import ValidationError

    try:
        limits = client.info().limits
    except KBError as exc:
        if exc.status == 0:  # not reached (or not HTTP): the first batch would wait again
            fail(exc.message)
        return settings  # a key it refuses, an older service: the first request says so
    except ValidationError:
        return settings
    return settings.model_copy(update=limits.model_dump(exclude_none=True))


def _names(paths: Sequence[str], shown: int = 3) -> str:
    """Paths for a message: the first `shown`, then how many more."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _without_files(paths: Sequence[str], found: Sequence[Source]) -> list[str]:
    """The folders named that gave `sources` no file to read: a load of them was a summary
    of zeros, as if the files had been read and found empty."""
    # by the folder each source came from: its path no longer starts with "./" (`kb load .`)
    named = {source.named for source in found}
    return [p for p in paths if p != "-" and p not in named and os.path.isdir(p)]


def _target(
    settings: Settings,
    client: KBClient | None,
    mode: str,
    on_duplicate: str,
    size: int | None = None,
) -> _Target:
    """The service behind `client` (URL_IN_FLIGHT requests at a time, so it embeds one
    while it writes another), or the store itself: an encoder process embeds the next
    batches while this process writes (ONNX backends; torch embeds here, in turn). An input
    of known `size` under the text kb serve's encoder process waits for (STARTING_CHARS per
    text of KB_ENCODER_PROCESS_MIN_TEXTS, 200 kB by default) embeds here too: it is over
    before a second interpreter would have loaded the model; so does every load when that
    setting is 0.

    Requests to a service stay under its limits (`settings` carries them, see
    _with_service_limits): a batch ends before its encoded body would pass the byte limit
    (130 texts of 140k characters were one 18 MB request, refused whole with 413), and a
    document too large for any request is a failed record, not a request refused."""
    if client is not None:
        from kb.client import ADD_OVERHEAD, add_bytes

        send = lambda docs: client.add(docs, mode, on_duplicate)  # type: ignore[arg-type]  # noqa: E731
        return _Target(
            send,
            lambda docs: docs,
            lambda: None,
            in_flight=URL_IN_FLIGHT,
            most_docs=settings.max_documents_per_request,
            weigh=add_bytes,
            max_weight=settings.max_request_bytes - ADD_OVERHEAD,
            remote=True,
        )
    from kb.encoders.process import EncoderProcess, wanted
    from kb.store import WriteMode

    write_mode = WriteMode(mode)
    from kb.encoders.bulk import STARTING_CHARS

    small = size is not None and size < STARTING_CHARS * settings.encoder_process_min_texts
    if not wanted(settings, settings.backend) or small:
        store = open_store(settings, searching=False)
        here = lambda docs: store.prepare(docs, write_mode, on_duplicate)  # noqa: E731
        return _Target(store.commit, here, store.close)
    try:
        encoder = EncoderProcess(settings)
    except KBError as exc:
        fail(exc.message)
    try:
        store = open_store(settings, searching=False, embedder=encoder)
    except BaseException:
        encoder.close()
        raise

    def close() -> None:
        store.close()
        encoder.close()

    def prepare(docs: Sequence[DocumentIn]) -> Future[PreparedAdd]:
        return store.prepare_later(docs, write_mode, on_duplicate, encoder.submit)

    return _Target(store.commit, prepare, close, ahead=1)


@main.command()
@click.option(
    "--where",
    "where",
    default=None,
    callback=not_empty,
    help="A JSON filter, as /query takes it.",
)
@click.option(
    "-o",
    "--output",
    type=GivenPath(dir_okay=False, allow_dash=True, path_type=Path),
    default="-",
    callback=outside_store,
    help="File to write, replaced once the export is whole (default: standard output).",
)
@sigterm_as_ctrl_c()  # its partial file removed, what it left said
def export(where: str | None, output: Path) -> None:
    """Write documents as JSONL: id, text and metadata exactly as given (chunks joined); to
    an -o file named .json, as a JSON array."""
    settings = Settings()
    flt = _export_filter(where, settings)
    store = open_store(settings, searching=False, existing=True)
    try:
        count = _export_to(store, flt, output)
    except KBError as exc:
        fail(f"export failed: {exc.message}")
    except KeyboardInterrupt:
        if str(output) == "-":
            interrupted("Export interrupted: what standard output got is part of the export")
        interrupted(f"Export interrupted: nothing was written to {output} (-o)")
    finally:
        store.close()
    click.echo(f"exported {count} documents", err=True)


def _export_filter(where: str | None, settings: Settings) -> CompiledFilter:
    """--where compiled with the service's limits (KB_MAX_FILTER_*), or a usage error (exit
    2; it was 1) saying what is wrong with it."""
    from kb import json_input
    from kb.filters import FilterLimits, compile_filter

    try:
        parsed = json_input.loads_object(where) if where else None
        return compile_filter(where=parsed, limits=FilterLimits.of(settings))
    except json_input.UnusableJSON as exc:  # JSON, but not JSON kb can take
        problem = str(exc)
    except ValueError as exc:
        problem = f"not valid JSON: {exc}"
    except KBError as exc:
        problem = exc.message
    raise click.BadParameter(problem, param_hint="'--where'")


def _export_to(store: KnowledgeStore, flt: CompiledFilter, output: Path) -> int:
    """Export to standard output ('-') or to a file that takes the export's name only once
    it is whole (kb.files.replacing): click.File opened the file on the first write, so an
    export of 0 documents left an old file as it was (or made none), and a failed one left
    it torn."""
    if str(output) == "-":
        with click.open_file("-", "w", encoding="utf-8") as stdout:  # kept open
            try:
                count = _write_documents(store, flt, stdout)
                stdout.flush()
            except OSError as exc:  # > /dev/full, a closed pipe
                stdout_failed(exc)
        return count
    from kb.files import replacing

    array = output.suffix.lower() == ".json"  # what `kb load` reads a .json file as
    with replacing(output) as partial, partial.open("w", encoding="utf-8") as out:
        return _write_documents(store, flt, out, array=array)


def _write_documents(
    store: KnowledgeStore, flt: CompiledFilter, out: IO[str], *, array: bool = False
) -> int:
    """Every document passing `flt` as a JSON line, or with `array` as an item of a JSON
    array (one a line); how many."""
    count = 0
    for doc in store.iter_documents(flt):
        record: dict[str, Any] = {"id": doc.id, "text": doc.text}
        if doc.metadata is not None:
            record["metadata"] = doc.metadata
        line = json.dumps(record, ensure_ascii=False)
        if array:
            line = ("[" if count == 0 else ",") + line
        out.write(line + "\n")
        count += 1
    if array:
        out.write("]\n" if count else "[]\n")
    return count


@main.command()
@click.argument(
    "dest", type=GivenPath(dir_okay=False, allow_dash=True, path_type=Path), callback=outside_store
)
@click.option(
    "--url",
    default=None,
    callback=not_empty,
    help="Back up a running kb service (its /backup route).",
)
@API_KEY
@sigterm_as_ctrl_c()  # its partial file removed, what it left said
def backup(dest: Path, url: str | None, api_key: str | None) -> None:
    """Write a consistent backup of the store to DEST (gzip JSON lines with the vectors);
    '-' writes it to standard output.

    While kb serve has the embedded store open, back up through it with --url: writes wait
    while the copy is taken, searches go on.
    """
    from kb import backup as backups

    started = time.perf_counter()
    to_stdout = str(dest) == "-"
    if to_stdout and sys.stdout.isatty():
        fail("a backup is gzip data, not for a terminal (DEST -): redirect it or name a file")
    target = sys.stdout.buffer if to_stdout else dest
    where = backups.STDOUT if to_stdout else str(dest)
    client = _client(url, api_key, timeout=3600)
    try:
        if client is not None:
            with client.backup() as stream:
                shown = f"what {client.url}/backup sent"
                count = backups.save_stream(stream, target, shown)["records"]
        else:
            store = open_store(searching=False, existing=True)
            try:
                count = backups.write_file(store, target)
            finally:
                store.close()
    except KBError as exc:
        if (gone := closed_pipe(exc)) is not None:  # `kb backup - | head -c 100`: quiet
            stdout_failed(gone)
        fail(f"backup failed: {exc.message}")
    except KeyboardInterrupt:
        if to_stdout:
            interrupted("Backup interrupted: what standard output got is not a whole backup")
        interrupted(f"Backup interrupted: nothing was written to {dest}")
    elapsed = time.perf_counter() - started
    # on stderr, as load's and export's: `kb backup /dev/stdout > f.gz` put it in the gzip
    click.echo(f"backed up {count} records to {where} in {elapsed:.1f}s", err=True)


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Delete what the collection holds first.")
@sigterm_as_ctrl_c()  # its partial file removed, what it left said
def restore(source: Path, replace: bool) -> None:
    """Load a backup into the configured store (stop kb serve on an embedded store first)."""
    from kb import backup as backups

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:  # a file that is no backup is refused before the store is opened (or created)
            readable = stack.enter_context(backups.rereadable(source))
            backups.read_header(readable, str(source))
        except KBError as exc:
            fail(f"restore failed: {exc.message}")
        except KeyboardInterrupt:  # while a pipe was copied
            interrupted("Restore interrupted before it wrote anything: the store is as it was")
        settings = Settings()
        store = open_store(settings, searching=False)
        partial = _partial(settings.collection, replace, source)
        try:
            count = backups.restore(store, readable, replace=replace, shown=str(source))
        except backups.RestoreFailed as exc:  # a full disk, a server gone, part-way
            fail(f"restore failed: {exc.message}; {partial}")
        except KBError as exc:
            fail(f"restore failed: {exc.message}")
        except backups.RestoreInterrupted as exc:
            if exc.switched:
                interrupted(
                    "Restore interrupted once the restored records were in the store's place: "
                    "it holds the whole backup (its next open removes the records replaced and "
                    "rebuilds the keyword index)"
                )
            if not exc.changed and exc.beside:
                interrupted(
                    "Restore interrupted: the store is as it was (the records it wrote beside "
                    "it are removed when the store is next opened)"
                )
            if not exc.changed:
                interrupted("Restore interrupted before it wrote anything: the store is as it was")
            interrupted(f"Restore interrupted: {partial}")
        except KeyboardInterrupt:
            interrupted("Restore interrupted before it wrote anything: the store is as it was")
        finally:
            store.close()
    elapsed = time.perf_counter() - started
    click.echo(f"restored {count} records from {source} in {elapsed:.1f}s", err=True)


def _partial(collection: str, replace: bool, source: Path) -> str:
    """What a restore stopped after it began writing (a Ctrl-C, a store error) left."""
    what = "what it held was deleted; it" if replace else "it"
    return (
        f"collection '{collection}' is partial ({what} holds part of the backup, or nothing). "
        f"Run `kb restore --replace {source}` to restore it whole."
    )
