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
    """What a search in `mode` leaves unread of `text`, or None when it reads it whole. The
    text is tokenized a second time (the encoder keeps no count, and a query vector kept by
    kb.query_cache is not tokenized at all): 70 us for a short query against its encoder
    run's 12 ms, 0.5-0.7% up to 1,320 characters, 5% at 10,000 (a loaded 2-core machine)."""
    pieces = embedder.max_tokens - 2
    spans = embedder.tokens(text).offsets
    stop = spans[pieces - 1][1] if len(spans) > pieces else None
    terms = len(distinct_terms(text)) if mode != "dense" else 0
    if stop is None and terms <= MAX_TERMS:
        return None
    return Unread(len(text), pieces, stop, terms if terms > MAX_TERMS else None)
