"""Split long texts into windows the model can read, and join them back exactly.

Windows follow the text's structure: a chunk ends at the last paragraph break it can, else at
a sentence end, else at a word boundary. Chunks cut inside a paragraph overlap their
neighbour so a sentence on the cut is whole in one of them; chunks cut at a paragraph break
do not, so a closing paragraph is not diluted by the one before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

SENTENCE_ENDS = (".", "!", "?", ":", ";")
Offsets = Sequence[tuple[int, int]]


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
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = _cut(text, offsets, first, min(first + window, n))
        start = 0 if not chunks else offsets[first][0]
        end = len(text) if last == n else offsets[last][0]
        chunks.append(Chunk(start, text[start:end]))
        if last == n:
            return chunks
        if _gap(text, offsets, last).count("\n") >= 2:
            first = last
        else:
            nxt = _word_start(text, offsets, max(last - overlap, first + 1))
            first = nxt if nxt > first else last


def _gap(text: str, offsets: Offsets, j: int) -> str:
    """The characters between token j-1 and token j."""
    return text[offsets[j - 1][1] : offsets[j][0]]


def _cut(text: str, offsets: Offsets, first: int, limit: int) -> int:
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
    word = _word_start(text, offsets, limit)
    return word if word > first else limit


def _word_start(text: str, offsets: Offsets, j: int) -> int:
    """Move j back to the first token of the word that token j belongs to."""
    floor = max(j - 16, 1)
    while j > floor and offsets[j][0] == offsets[j - 1][1] and not text[offsets[j][0]].isspace():
        j -= 1
    return j


def join(chunks: Sequence[Chunk]) -> str:
    """The text that `split` was given, from its chunks in order."""
    parts = [chunk.text[: following.start - chunk.start] for chunk, following in pairwise(chunks)]
    parts.append(chunks[-1].text)
    return "".join(parts)
