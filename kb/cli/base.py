"""The `kb` command group and what its commands share."""

from __future__ import annotations

from typing import NoReturn

import click

from kb import __version__
from kb.config import API_KEY_VARIABLE, Settings, unknown_variables
from kb.embeddings import Embedder
from kb.errors import KBError
from kb.store import KnowledgeStore

API_KEY = click.option(
    "--api-key",
    envvar=API_KEY_VARIABLE,
    default=None,
    help=f"With --url: the key to send ({API_KEY_VARIABLE}); writes need a read-write key.",
)


@click.group()
@click.version_option(__version__, prog_name="kb")
def main() -> None:
    """kb: a knowledge base that stores text with metadata and searches it by meaning.

    Every option's default comes from a KB_* environment variable (see the README).
    """
    for warning in unknown_variables():
        click.echo(f"kb: warning: {warning}", err=True)


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def open_store(
    settings: Settings | None = None, *, searching: bool = True, embedder: Embedder | None = None
) -> KnowledgeStore:
    """The configured store, or a clean exit naming what went wrong (locked, mismatched).
    Commands that never search pass `searching=False`: no in-memory copies are loaded."""
    try:
        return KnowledgeStore.open(settings or Settings(), embedder, searching=searching)
    except KBError as exc:
        fail(exc.message)
