"""Split long texts into windows the model can read, and join them back exactly.

Windows follow the text's structure: a chunk ends at the last paragraph break it can, else at
a sentence end, else at a word boundary. Chunks cut inside a paragraph overlap their
neighbour by at least `overlap` tokens (more to start at a word, at most a quarter of the
window's other tokens), so a phrase that long on the cut is whole in one of them; chunks cut
at a paragraph break do not, so a closing paragraph is not diluted by the one before it.

A word is what the model's tokenizer splits into pieces (its own word split: for BERT's
WordPiece, the packaged model's, text between spaces and punctuation, and each CJK ideograph).
Chunks start at a word's first piece where they can: tokenized alone from its middle, a
word's rest can take more pieces than it had in the whole text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

SENTENCE_ENDS = (".", "!", "?", ":", ";")
Offsets = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Tokens:
    """A text's word pieces as the model reads it (no special tokens): their character
    spans, and whether each starts a word, as the tokenizer's own word ids say."""

    offsets: list[tuple[int, int]]
    starts: list[bool]

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def of(cls, offsets: Offsets, word_ids: Sequence[int | None]) -> Tokens:
        starts = [
            j == 0 or word is None or word != word_ids[j - 1] for j, word in enumerate(word_ids)
        ]
        return cls([(int(a), int(b)) for a, b in offsets], starts)


@dataclass(frozen=True)
class Chunk:
    start: int  # character offset of the chunk in its document
    text: str


def split(text: str, tokens: Tokens, window: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `window` of the text's tokens.

    Each chunk runs up to the start of the next chunk's first token it does not share, so
    `join` rebuilds the text byte for byte. A text that fits the window is one chunk.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError("need window >= 1 and 0 <= overlap < window")
    offsets, n = tokens.offsets, len(tokens)
    if n <= window:
        return [Chunk(0, text)]
    # How far a cut or a chunk's start may move back to a word's start: a quarter of what a
    # chunk adds, so each chunk still adds at least half of that.
    slack = max((window - overlap) // 4, 1)
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = _cut(text, tokens, first, _limit(text, tokens, first, window), slack)
        start = 0 if not chunks else offsets[first][0]
        end = len(text) if last == n else offsets[last][0]
        chunks.append(Chunk(start, text[start:end]))
        if last == n:
            return chunks
        if _gap(text, offsets, last).count("\n") >= 2:
            first = last
        else:
            first = _next_start(tokens, first, last, overlap, slack)


def _gap(text: str, offsets: Offsets, j: int) -> str:
    """The characters between token j-1 and token j."""
    return text[offsets[j - 1][1] : offsets[j][0]]


def _limit(text: str, tokens: Tokens, first: int, window: int) -> int:
    """The end of the window that starts at token `first`. A chunk that starts inside a word
    has that word's rest tokenized anew, maybe into more pieces (at most one a decomposed
    character; the characters between its tokens give none), so the rest counts that many.
    The window keeps at least one token."""
    offsets, starts = tokens.offsets, tokens.starts
    limit = min(first + window, len(tokens))
    if starts[first]:
        return limit
    cost = 0
    for j in range(first, limit):
        if starts[j]:
            return min(limit, j + window - cost)
        cost += _pieces_at_most(text[offsets[j][0] : offsets[j][1]])
        if cost > window:
            return max(j, first + 1)
    return limit


def _pieces_at_most(text: str) -> int:
    """The most word pieces `text`, part of one word, can take: one a decomposed character."""
    return len(unicodedata.normalize("NFD", text))


def _cut(text: str, tokens: Tokens, first: int, limit: int, slack: int) -> int:
    """Index of the first token after the chunk that starts at `first` (at most `limit`)."""
    offsets = tokens.offsets
    n = len(offsets)
    top = min(limit, n - 1)
    for j in range(top, first + (limit - first) // 4, -1):
        if _gap(text, offsets, j).count("\n") >= 2:
            return j
    if limit == n:
        return n
    for j in range(limit, first + (limit - first) * 3 // 4, -1):
        token = text[offsets[j - 1][0] : offsets[j - 1][1]]
        if token.endswith(SENTENCE_ENDS) or "\n" in _gap(text, offsets, j):
            return j
    for j in range(limit, max(limit - slack, first + 1) - 1, -1):
        if tokens.starts[j]:
            return j
    return limit  # inside a word longer than `slack`


def _next_start(tokens: Tokens, first: int, last: int, overlap: int, slack: int) -> int:
    """The first token of the chunk after tokens [first, last): the start of the word that
    holds token `last - overlap`, so the two share at least `overlap` tokens; inside that
    word when it starts more than `slack` tokens further back (or at `first`)."""
    target = max(last - overlap, first + 1)
    for j in range(target, max(target - slack, first + 1) - 1, -1):
        if tokens.starts[j]:
            return j
    return target


def join(chunks: Sequence[Chunk]) -> str:
    """The text that `split` was given, from its chunks in order."""
    parts = [chunk.text[: following.start - chunk.start] for chunk, following in pairwise(chunks)]
    parts.append(chunks[-1].text)
    return "".join(parts)
