"""The `kb` command group and what its commands share."""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from kb import __version__
from kb.chroma_file import CHROMA_FILE
from kb.cli.interrupt import terminated
from kb.config import API_KEY_VARIABLE, Settings, settings_problems, unknown_variables
from kb.embeddings import Embedder, load_embedder
from kb.errors import KBError
from kb.lock import StoreLocked
from kb.store import KnowledgeStore

API_KEY = click.option(
    "--api-key",
    envvar=API_KEY_VARIABLE,
    default=None,
    help=f"With --url: the key to send ({API_KEY_VARIABLE}); writes need a read-write key.",
)


class _Commands(click.Group):
    """The group: an invalid KB_* setting, wherever a command reads the settings, is one
    'Error: KB_FIELD: message' line per problem (exit 1), not pydantic's traceback; a Ctrl-C
    a command does not answer itself (loading the model, reading a file) exits 130, as a
    shell reports it, where click said "Aborted!" and exited 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            if exc.title != Settings.__name__:  # a document's or a request's: not ours to say
                raise
            raise click.ClickException("\n".join(settings_problems(exc))) from None
        except KeyboardInterrupt:
            interrupted(" ".join(filter(None, ["kb", ctx.invoked_subcommand, "interrupted"])))


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="kb")
def main() -> None:
    """kb: a knowledge base that stores text with metadata and searches it by meaning.

    Its settings come from KB_* environment variables (see the README's Configuration);
    an option that names one, as --port names KB_PORT, overrides it for one run.
    """
    previous, logging.lastResort = logging.lastResort, _KbLines(logging.WARNING)
    click.get_current_context().call_on_close(lambda: setattr(logging, "lastResort", previous))
    for warning in unknown_variables():
        warn(warning)


class _KbLines(logging.Handler):
    """What a command that configures no logging (all but kb serve and kb cluster, whose app
    logs JSON or text lines) shows of a kb module's warning: a `kb: warning: ...` line, as
    warn() writes (a `kb: error: ...` one for an error). Python's last-resort handler wrote
    the bare message: a damaged keyword index moved aside and rebuilt was a line that did not
    say it came from kb (review helper 91). Other libraries' lines are left as they were."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.name == "kb" or record.name.startswith("kb."):
                text = f"kb: {'warning' if record.levelno < logging.ERROR else 'error'}: {text}"
            click.echo(text, err=True)
        except Exception:
            self.handleError(record)


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


class GivenPath(click.Path):
    """click.Path that refuses an empty value: Path("") is ".", the working directory (a
    `kb load "$DIR"` with DIR unset loaded the working directory, recursively)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value:
            self.fail("an empty path names no file (the current folder is '.')", param, ctx)
        return super().convert(value, param, ctx)


class NumberRange(click.FloatRange):
    """click.FloatRange that refuses NaN ('nan', '-nan'): every comparison with it is false,
    so it passed any range (`kb duplicates --min-score nan` found nothing, exit 0)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


def not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A callback refusing an empty option value (`--url "$URL"` with URL unset) as a usage
    error: it was taken as no value, and the command went to the local store instead."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty (leave the option out instead)")
    return value


def outside_store(
    ctx: click.Context, param: click.Parameter, value: Path | str | None
) -> Path | str | None:
    """A callback refusing a file to write inside the embedded store's folder (KB_CHROMA_PATH),
    a link to one included, as a usage error: `kb backup chroma_db/chroma.sqlite3` renamed
    its file over the store's own, exit 0, and the store was gone. A path under /dev or
    /proc is resolved too: `/dev/stdout` resolves outside the store, but a store on tmpfs
    (`/dev/shm/kb`) or reached through `/proc/self/cwd` was written into in place (review
    helper 98)."""
    if value is None or str(value) == "-":
        return value
    try:
        settings = Settings()
    except ValidationError:  # said as the command reads its settings
        return value
    if settings.chroma_url:
        return value
    store = Path(os.path.realpath(settings.chroma_path))
    target = Path(os.path.realpath(value))
    if target == store or store in target.parents:
        raise click.BadParameter(
            f"{value} is inside the store's folder {store} (KB_CHROMA_PATH): writing it "
            "would replace or add to the store's own files; name a file outside it"
        )
    return value


def interrupted(message: str) -> NoReturn:
    """A Ctrl-C: `message` (what was or was not written) on stderr, exit 130 (128 + SIGINT,
    as a shell reports a command Ctrl-C stopped); click said "Aborted!", exit 1. A SIGTERM
    taken as a Ctrl-C (`kb.cli.interrupt.sigterm_as_ctrl_c`) exits 143 (128 + SIGTERM)."""
    click.echo(f"\n{message}", err=True)
    sys.exit(128 + (signal.SIGTERM if terminated() else signal.SIGINT))


def stdout_failed(exc: OSError) -> NoReturn:
    """Standard output could not be written (> /dev/full): one line, and stdout pointed at
    /dev/null so the interpreter's own flush at exit adds no traceback. A pipe whose reader
    stopped reading (`kb export | head -1`) is no error to report: a quiet exit 141 (128 +
    SIGPIPE), what a shell reports for `seq 1000000 | head -1`; it said "Error: cannot write
    standard output: Broken pipe", exit 1 (review helper 91)."""
    with suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if exc.errno == errno.EPIPE:
        sys.exit(128 + signal.SIGPIPE)
    fail(f"cannot write standard output: {exc.strerror or exc}")


def out(line: str) -> None:
    """A line of the command's output: one that cannot be written is what `stdout_failed`
    makes of it (> /dev/full: one line; a closed pipe: a quiet exit 141), as in kb export;
    it was a traceback."""
    try:
        click.echo(line)
    except OSError as exc:
        stdout_failed(exc)


def closed_pipe(exc: KBError) -> OSError | None:
    """The closed pipe behind `exc`, when it says standard output could not be written
    (kb.backup raises it inside the handler of the OSError: its context); else None."""
    cause = exc.__cause__ or exc.__context__
    if exc.code == "unwritable" and isinstance(cause, BrokenPipeError):
        return cause
    return None


def warn(message: str) -> None:
    """One `kb: warning: ...` line on stderr: the command goes on."""
    click.echo(f"kb: warning: {message}", err=True)


def open_store(
    settings: Settings | None = None,
    *,
    searching: bool = True,
    embedder: Embedder | None = None,
    existing: bool = False,
) -> KnowledgeStore:
    """The configured store, or a clean exit naming what went wrong (locked, mismatched).
    Commands that never search pass `searching=False`: no in-memory copies are loaded.
    Commands that only read pass `existing=True`: opening creates a missing store or
    collection, so a mistyped KB_CHROMA_PATH or KB_COLLECTION would be read as an empty
    knowledge base (an export or a backup of 0 documents, rc 0) and leave a new directory or
    collection behind."""
    settings = settings or Settings()
    if existing and not settings.chroma_url:
        _require_store(settings.chroma_path)
    try:
        return KnowledgeStore.open(settings, embedder, searching=searching, existing=existing)
    except StoreLocked as exc:
        fail(_locked(exc))
    except KBError as exc:
        fail(exc.message)
    except Exception as exc:
        from chromadb.errors import InternalError

        if settings.chroma_url or not isinstance(exc, InternalError):
            raise
        # Chroma's SQLite file written over or torn: one line naming it, not 59 of traceback
        fail(f"cannot open the store's {settings.chroma_path / CHROMA_FILE}: {exc}")


def _locked(exc: StoreLocked) -> str:
    """The lock's message; its advice (go through the service's API: kb load --url, kb
    backup --url) only for a command that has --url."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or any(param.name == "url" for param in ctx.command.params):
        return exc.message
    return f"{exc.situation} Stop that process first (kb {ctx.info_name} has no --url)."


def open_embedder(settings: Settings) -> Embedder:
    """The configured model, or a clean exit naming what is wrong with KB_MODEL."""
    try:
        return load_embedder(settings)
    except KBError as exc:
        fail(exc.message)


def _require_store(path: Path) -> None:
    if path.exists() and not path.is_dir():
        fail(f"no store at {path} (KB_CHROMA_PATH): it is a file, not a directory")
    if not path.is_dir():
        fail(f"no store at {path} (KB_CHROMA_PATH): the directory does not exist")
    if not (path / CHROMA_FILE).is_file():
        fail(f"no store at {path} (KB_CHROMA_PATH): the directory holds no {CHROMA_FILE}")
