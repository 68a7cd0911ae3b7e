"""Input files as text: a byte-order mark dropped (a UTF-16 or UTF-32 one decoding the file
as such), and bytes that are not UTF-8 kept (as U+DC80..U+DCFF) so the record holding one is
reported with its line and the others load."""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


@contextmanager
def decoded(raw: IO[bytes] | None, detach: bool = False) -> Iterator[IO[str] | None]:
    """`raw` as text: a leading byte-order mark dropped (a BOM made a CSV's first column
    "\ufeffid" and hid Markdown front matter; a UTF-16 or UTF-32 one decodes the file as
    such), and bytes that are not UTF-8 kept as U+DC80..U+DCFF (surrogateescape), so the
    record holding one is reported, with its line, and the others load. `detach` leaves
    `raw` open (standard input)."""
    if raw is None:
        yield None
        return
    encoding = _encoding(raw)
    # UTF-16/32 strictly: surrogateescape cannot keep their bad bytes below 0x80, and the
    # UnicodeDecodeError is the file's problem (kb.loader.read)
    errors = "surrogateescape" if encoding == "utf-8-sig" else "strict"
    stream = io.TextIOWrapper(raw, encoding=encoding, errors=errors, newline="")
    try:
        yield stream
    finally:
        if detach:
            stream.detach()


# UTF-32 LE's mark begins with UTF-16 LE's: it is looked for first
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _encoding(raw: IO[bytes]) -> str:
    """UTF-16 or UTF-32 when `raw` starts with their byte-order mark (what Windows tools
    write: it was read as UTF-8, NULs and all), else UTF-8. Only a stream that can peek
    is looked at: reading ahead would lose the bytes."""
    peek = getattr(raw, "peek", None)
    start = peek(4)[:4] if peek is not None else b""
    return next((name for bom, name in _BOMS if start.startswith(bom)), "utf-8-sig")


NUL_BYTE = "a NUL byte: a binary or UTF-16 file? save it as UTF-8"


def nul_line(text: str, first: int = 1) -> int | None:
    """The line (counting from `first`) of `text`'s first NUL character, or None. No text
    file holds one: it is a binary file, or UTF-16 without its byte-order mark, whose every
    other byte is NUL (stored, it was a text laced with NULs)."""
    found = text.find("\x00")
    return None if found < 0 else first + text.count("\n", 0, found)


_BAD_BYTE = re.compile("[\udc80-\udcff]")


def undecodable(text: str) -> str | None:
    """What is wrong when `text` holds a byte that was not UTF-8 (see decoded), else None."""
    if text.isascii() or (found := _BAD_BYTE.search(text)) is None:
        return None
    return f"not UTF-8 text: byte 0x{ord(found.group()) - 0xDC00:02x}"


def bad_line(text: str) -> int:
    """The line (from 1) of `text`'s first byte that was not UTF-8."""
    found = _BAD_BYTE.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else 1
