"""The `kb` command group and what its commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from kb import __version__
from kb.config import API_KEY_VARIABLE, Settings, settings_problems, unknown_variables
from kb.embeddings import Embedder, load_embedder
from kb.errors import KBError
from kb.store import KnowledgeStore

CHROMA_FILE = "chroma.sqlite3"  # what an embedded Chroma store always holds

API_KEY = click.option(
    "--api-key",
    envvar=API_KEY_VARIABLE,
    default=None,
    help=f"With --url: the key to send ({API_KEY_VARIABLE}); writes need a read-write key.",
)


class _Commands(click.Group):
    """The group: an invalid KB_* setting, wherever a command reads the settings, is one
    'Error: KB_FIELD: message' line per problem (exit 1), not pydantic's traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            if exc.title != Settings.__name__:  # a document's or a request's: not ours to say
                raise
            raise click.ClickException("\n".join(settings_problems(exc))) from None


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="kb")
def main() -> None:
    """kb: a knowledge base that stores text with metadata and searches it by meaning.

    Every option's default comes from a KB_* environment variable (see the README).
    """
    for warning in unknown_variables():
        warn(warning)


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


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
    except KBError as exc:
        fail(exc.message)


def open_embedder(settings: Settings) -> Embedder:
    """The configured model, or a clean exit naming what is wrong with KB_MODEL."""
    try:
        return load_embedder(settings)
    except KBError as exc:
        fail(exc.message)


def _require_store(path: Path) -> None:
    if not path.is_dir():
        fail(f"no store at {path} (KB_CHROMA_PATH): the directory does not exist")
    if not (path / CHROMA_FILE).is_file():
        fail(f"no store at {path} (KB_CHROMA_PATH): the directory holds no {CHROMA_FILE}")
