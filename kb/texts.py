"""The mirror's copy of each row's chunk text: what a hit shows, and what a text filter's
substring test reads (kb.document_filter).

Long texts are kept zlib-compressed: at 100k paragraphs kb serve held 70-90 MiB less at
ready (README, Memory), for 22 us a text as it is added or loaded and 9 us for each hit
whose text is shown. Rows are appended by the mirror's writer, under its lock; readers never
lock (a row's text never changes once appended).
"""

from __future__ import annotations

import zlib

import numpy as np

# Texts of at least this many characters are kept compressed (ratio 0.53-0.58 on the bench's
# paragraphs and on SciFact).
PACKED_CHARS = 256
# A substring test runs over every row's text while at most one in this many is compressed: a
# text kept as is is tested in about 0.1 us, a compressed one is unpacked first (about 6 us),
# and Chroma's own test of every record (about 0.2 us each, 17 ms at 100k short ones, plus
# 1.5-2 us for each match it lists) is cheaper than unpacking many.
SCANNED_PACKED_SHARE = 32


class Texts:
    """The texts by row, long ones compressed."""

    def __init__(self) -> None:
        self._texts: list[str | bytes] = []
        self._packed = 0  # how many are compressed
        self._cut: list[int] = []  # rows whose text holds a NUL (see `containing`)

    def __len__(self) -> int:
        return len(self._texts)

    def append(self, text: str) -> None:
        kept = _pack(text)
        self._packed += isinstance(kept, bytes)
        if "\x00" in text:
            self._cut.append(len(self._texts))
        self._texts.append(kept)

    def __getitem__(self, row: int) -> str:
        return _unpack(self._texts[row])

    def stored_size(self, row: int) -> int:
        """The size the row's text is kept at: characters, or bytes once compressed."""
        return len(self._texts[row])

    @property
    def cheap_to_scan(self) -> bool:
        """Whether a substring test of every text is cheap: few are compressed."""
        return self._packed * SCANNED_PACKED_SHARE <= len(self._texts)

    def containing(self, text: str, size: int) -> np.ndarray:
        """Mask of the rows below `size` whose text contains `text` (case-sensitive, as
        Chroma's $contains, which also reads a text only up to its first NUL)."""
        found = np.fromiter(
            (text in (t if isinstance(t, str) else _unpack(t)) for t in self._texts[:size]),
            dtype=bool,
            count=size,
        )
        for row in self._cut[:]:
            if row < size:
                found[row] = text in self[row].partition("\x00")[0]
        return found


def _pack(text: str) -> str | bytes:
    """A text as it is kept: compressed if long enough for that to pay."""
    if len(text) < PACKED_CHARS:
        return text
    packed = zlib.compress(text.encode(), 1)
    return packed if len(packed) < len(text) else text


def _unpack(text: str | bytes) -> str:
    return text if isinstance(text, str) else zlib.decompress(text).decode()
