"""FTS5's tokens, in Python: what the in-memory keyword index (kb.bm25) and queries on it
split a text into, exactly as the FTS5 table beside the store (kb.keyword) does, so keyword
search answers alike on both.

FTS5 reads a text with `unicode61 remove_diacritics 2` (letters, digits and private-use
characters with their combining marks make a token; case and Latin diacritics folded) and
its Porter stemmer: Porter's own C version (`methodology` -> `methodolog`, where the Snowball
`porter` gives `methodologi`), on UTF-8 bytes (`Straße` -> `straß`), leaving tokens under 3
or over 64 bytes as they are. Rather than re-implement those, each run of letters and digits
(and anything outside ASCII) is handed to FTS5 itself, an in-memory table asked once for all
of a text's new runs, and its tokens are remembered: a corpus's vocabulary is asked once.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from functools import cache
from itertools import chain

TOKENIZER = "porter unicode61 remove_diacritics 2"  # the FTS5 table's, and this module's
UNSTEMMED = "unicode61 remove_diacritics 2"  # a query's words before stemming
RUN = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff]+")  # other ASCII separates; FTS5 the rest
REMEMBERED = 500_000  # runs kept with their tokens (then forgotten, all)
KEPT_CHARS = 64  # longer runs (CJK sentences, words joined by dashes) are asked each time


class _Fts5:
    """An in-memory FTS5 table with one tokenizer, asked for the tokens of pieces of text."""

    def __init__(self, tokenizer: str) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        # FTS5's Porter stemmer works on bytes and can cut a character in two ('a丸ed'):
        # such a token is read as its bytes, undecodable ones kept as surrogates, the same
        # for documents and queries
        self._db.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
        self._db.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize = '{tokenizer}')")
        self._db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, ...]] = {}

    def __call__(self, runs: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Each run's tokens, in order (new runs asked of FTS5 in one go)."""
        runs = list(dict.fromkeys(runs))
        known = self._known  # replaced, never emptied in place: safe to read unlocked
        if all(run in known for run in runs):
            return {run: known[run] for run in runs}
        with self._lock:
            known = self._known
            found = self._tokens([run for run in runs if run not in known])
            asked = {run: found[run] if run in found else known[run] for run in runs}
            if len(known) + len(found) > REMEMBERED:
                known = {}
            known.update((run, found[run]) for run in found if len(run) <= KEPT_CHARS)
            self._known = known
            return asked

    def _tokens(self, runs: list[str]) -> dict[str, tuple[str, ...]]:
        if not runs:
            return {}
        tokens: list[list[str]] = [[] for _ in runs]
        with self._db:
            self._db.executemany("INSERT INTO t (rowid, x) VALUES (?, ?)", enumerate(runs, 1))
            for doc, term in self._db.execute("SELECT doc, term FROM v ORDER BY doc, offset"):
                tokens[doc - 1].append(term)
            self._db.execute("DELETE FROM t")
        return {run: tuple(found) for run, found in zip(runs, tokens, strict=True)}


@cache
def _fts5(tokenizer: str) -> _Fts5:
    """The process's table for a tokenizer, made on first use (not on import: every kb
    command imports this module, few tokenize)."""
    return _Fts5(tokenizer)


def tokens(text: str) -> list[str]:
    """The text's tokens as the FTS5 table holds them, in order."""
    return _split(text, _fts5(TOKENIZER))


def token_lists(texts: Sequence[str]) -> list[list[str]]:
    """Each text's tokens, as `tokens` gives them, the new runs of all the texts asked of
    FTS5 in one query, not one a text: the first 10,000 short texts of the bench's 100k
    store, new to the process, took 70 ms against 322 (once every run is known, 95 against
    101)."""
    fts5 = _fts5(TOKENIZER)
    runs = [RUN.findall(text) for text in texts]
    known = fts5(chain.from_iterable(runs))
    return [[token for run in found for token in known[run]] for found in runs]


def words(text: str) -> list[str]:
    """The text's words as FTS5 splits and folds them, before stemming: each is one token
    of the FTS5 table, so a query of them ORs the same tokens on both keyword paths."""
    return _split(text, _fts5(UNSTEMMED))


def _split(text: str, fts5: _Fts5) -> list[str]:
    runs = RUN.findall(text)
    known = fts5(runs)
    return [token for run in runs for token in known[run]]
