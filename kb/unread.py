"""What a search leaves unread of a long query: the model reads its first max_tokens - 2 word
pieces (254 for the packaged model: its window of 256 holds [CLS] and [SEP] too), keyword
search its first MAX_TERMS distinct terms. The rest was ignored without a word, and a long
question whose point came last answered `ok` with confident, unrelated matches (review
helper 99); its result now says where the reading stopped."""

from __future__ import annotations

from dataclasses import dataclass

from kb.embeddings import Embedder
from kb.keyword import MAX_TERMS, distinct_terms

ADVICE = "so the rest was ignored: ask a shorter question."
# word pieces a character of a query can make at most: one piece per character, a Hangul
# syllable three (decomposed into its letters), with a margin. A query this short reads
# whole (and holds fewer than MAX_TERMS terms, each a character and a separator)
PIECES_PER_CHAR = 4


@dataclass(frozen=True)
class Unread:
    """A query read in part: `stop` is the character offset (of `length`) where the model
    stopped after its `pieces` word pieces (None: it read all of it), `terms` the count of
    distinct terms of a keyword or hybrid search past MAX_TERMS (None: it read them all)."""

    length: int
    pieces: int
    stop: int | None
    terms: int | None

    def sentence(self, terms_said: bool) -> str:
        """The sentence a result's message ends with; without the keyword part when the
        message already says it (`terms_said`: a no_keyword_match past MAX_TERMS terms)."""
        terms = None if terms_said else self.terms
        keyword = f"its first {MAX_TERMS} distinct words that are not stop words (of {terms})"
        if self.stop is None:
            return f"Keyword search read only {keyword}, {ADVICE}" if terms is not None else ""
        model = (
            f"The model read only the query's first {self.pieces} word pieces (its first "
            f"{self.stop:,} of {self.length:,} characters)"
        )
        if terms is None:
            return f"{model}, {ADVICE}"
        return f"{model}, and keyword search {keyword}, {ADVICE}"


def unread(embedder: Embedder, text: str, mode: str) -> Unread | None:
    """What a search in `mode` leaves unread of `text`, or None when it reads it whole. A
    text too short to reach either limit (63 characters for the packaged model) is not
    looked at; a longer one is tokenized a second time (the encoder keeps no count, and a
    query vector kept by kb.query_cache is not tokenized at all): 0.5-0.7% of its encoder
    run up to 1,320 characters, 5% at 10,000 (a loaded 2-core machine; 70 us, 0.56%, for a
    36-character query before the shortcut)."""
    pieces = embedder.max_tokens - 2
    if len(text) * PIECES_PER_CHAR <= pieces and len(text) < 2 * MAX_TERMS:
        return None  # most queries: too short to reach either limit, and not tokenized again
    spans = embedder.tokens(text).offsets
    stop = spans[pieces - 1][1] if len(spans) > pieces else None
    terms = len(distinct_terms(text)) if mode != "dense" else 0
    if stop is None and terms <= MAX_TERMS:
        return None
    return Unread(len(text), pieces, stop, terms if terms > MAX_TERMS else None)
