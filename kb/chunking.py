"""Split long texts into overlapping windows the model can read, and join them back exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

SENTENCE_ENDS = (".", "!", "?", "\n")


@dataclass(frozen=True)
class Chunk:
    start: int  # character offset of the chunk in its document
    text: str


def split(text: str, offsets: Sequence[tuple[int, int]], window: int, overlap: int) -> list[Chunk]:
    """Windows of at most `window` tokens overlapping by about `overlap` tokens.

    `offsets` are the character spans of the text's tokens. Each chunk runs up to the start of
    the next chunk's first unshared token, so `join` rebuilds the text byte for byte. A window
    ends at a sentence end when one falls in its last quarter, else at a word boundary.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError("need window >= 1 and 0 <= overlap < window")
    n = len(offsets)
    if n <= window:
        return [Chunk(0, text)]
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = n if first + window >= n else _cut(text, offsets, first, first + window)
        start = 0 if not chunks else offsets[first][0]
        end = len(text) if last == n else offsets[last][0]
        chunks.append(Chunk(start, text[start:end]))
        if last == n:
            return chunks
        nxt = _word_start(text, offsets, max(last - overlap, first + 1))
        first = nxt if nxt > first else last


def _cut(text: str, offsets: Sequence[tuple[int, int]], first: int, limit: int) -> int:
    """Index of the first token after the window [first, limit): prefer a sentence end."""
    floor = first + (limit - first) * 3 // 4
    for j in range(limit, floor, -1):
        if text[offsets[j - 1][0] : offsets[j - 1][1]].endswith(SENTENCE_ENDS):
            return j
        if "\n" in text[offsets[j - 1][1] : offsets[j][0]]:
            return j
    word = _word_start(text, offsets, limit)
    return word if word > first else limit


def _word_start(text: str, offsets: Sequence[tuple[int, int]], j: int) -> int:
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
