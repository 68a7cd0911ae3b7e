"""Split long texts into windows the model can read, and join them back exactly.

Windows follow the text's structure: a chunk ends at the last paragraph break it can, else at
a sentence end, else at a word boundary. Chunks cut inside a paragraph overlap their
neighbour by at least `overlap` tokens (more to start at a word, at most a quarter of the
window's other tokens), so a phrase that long on the cut is whole in one of them; chunks cut
at a paragraph break do not, so a closing paragraph is not diluted by the one before it.

A word here is what BERT's WordPiece tokenizer (the packaged model's) splits into pieces:
text between spaces, punctuation and CJK ideographs (each ideograph is a word). Chunks start
at a word's first piece where they can: tokenized alone from its middle, a word's rest can
take more pieces than it had in the whole text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

SENTENCE_ENDS = (".", "!", "?", ":", ";")
Offsets = Sequence[tuple[int, int]]
# BERT's CJK ideographs: each one is a word of its own (kana and Hangul are not).
CJK = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2CEAF),
    (0x2F800, 0x2FA1F),
)


@dataclass(frozen=True)
class Chunk:
    start: int  # character offset of the chunk in its document
    text: str


def split(text: str, offsets: Offsets, window: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `window` tokens; `offsets` are the character spans of the tokens.

    Each chunk runs up to the start of the next chunk's first token it does not share, so
    `join` rebuilds the text byte for byte. A text that fits the window is one chunk.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError("need window >= 1 and 0 <= overlap < window")
    n = len(offsets)
    if n <= window:
        return [Chunk(0, text)]
    # How far a cut or a chunk's start may move back to a word's start: a quarter of what a
    # chunk adds, so each chunk still adds at least half of that.
    slack = max((window - overlap) // 4, 1)
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = _cut(text, offsets, first, _limit(text, offsets, first, window), slack)
        start = 0 if not chunks else offsets[first][0]
        end = len(text) if last == n else offsets[last][0]
        chunks.append(Chunk(start, text[start:end]))
        if last == n:
            return chunks
        if _gap(text, offsets, last).count("\n") >= 2:
            first = last
        else:
            first = _next_start(text, offsets, first, last, overlap, slack)


def _gap(text: str, offsets: Offsets, j: int) -> str:
    """The characters between token j-1 and token j."""
    return text[offsets[j - 1][1] : offsets[j][0]]


def _limit(text: str, offsets: Offsets, first: int, window: int) -> int:
    """The end of the window that starts at token `first`. A chunk that starts inside a word
    has that word's rest tokenized anew, maybe into more pieces (at most one a decomposed
    character; the characters between its tokens give none), so the rest counts that many.
    The window keeps at least one token."""
    limit = min(first + window, len(offsets))
    if _starts_word(text, offsets, first):
        return limit
    cost = 0
    for j in range(first, limit):
        if _starts_word(text, offsets, j):
            return min(limit, j + window - cost)
        cost += _pieces_at_most(text[offsets[j][0] : offsets[j][1]])
        if cost > window:
            return max(j, first + 1)
    return limit


def _pieces_at_most(text: str) -> int:
    """The most word pieces `text`, part of one word, can take: one a decomposed character."""
    return len(unicodedata.normalize("NFD", text))


def _cut(text: str, offsets: Offsets, first: int, limit: int, slack: int) -> int:
    """Index of the first token after the chunk that starts at `first` (at most `limit`)."""
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
        if _starts_word(text, offsets, j):
            return j
    return limit  # inside a word longer than `slack`


def _next_start(
    text: str, offsets: Offsets, first: int, last: int, overlap: int, slack: int
) -> int:
    """The first token of the chunk after tokens [first, last): the start of the word that
    holds token `last - overlap`, so the two share at least `overlap` tokens; inside that
    word when it starts more than `slack` tokens further back (or at `first`)."""
    target = max(last - overlap, first + 1)
    for j in range(target, max(target - slack, first + 1) - 1, -1):
        if _starts_word(text, offsets, j):
            return j
    return target


def _starts_word(text: str, offsets: Offsets, j: int) -> bool:
    """Whether token j is a word's first piece: j = 0, or it is parted from token j-1 by a
    space, a punctuation mark or a CJK ideograph (a gap of other characters, such as the
    zero-width ones the tokenizer drops, does not part them)."""
    if j == 0:
        return True
    end, start = offsets[j - 1][1], offsets[j][0]
    if start < end:
        return False  # pieces of one character (a Hangul syllable's letters)
    return any(_parts_words(char) for char in text[max(end - 1, 0) : start + 1])


def _parts_words(char: str) -> bool:
    """Whether BERT's tokenizer ends a word at `char`: a space, punctuation or an ideograph."""
    code = ord(char)
    if char in " \t\n\r" or unicodedata.category(char) in {"Zs", "Zl", "Zp"}:
        return True
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P") or any(a <= code <= b for a, b in CJK)


def join(chunks: Sequence[Chunk]) -> str:
    """The text that `split` was given, from its chunks in order."""
    parts = [chunk.text[: following.start - chunk.start] for chunk, following in pairwise(chunks)]
    parts.append(chunks[-1].text)
    return "".join(parts)
