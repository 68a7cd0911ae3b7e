"""Input files as text: a byte-order mark dropped, and bytes that are not UTF-8 kept (as
U+DC80..U+DCFF) so the record holding one is reported with its line and the others load."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


@contextmanager
def decoded(raw: IO[bytes] | None, detach: bool = False) -> Iterator[IO[str] | None]:
    """`raw` as text: a leading byte-order mark dropped (a BOM made a CSV's first column
    "\ufeffid" and hid Markdown front matter), and bytes that are not UTF-8 kept as
    U+DC80..U+DCFF (surrogateescape), so the record holding one is reported, with its line,
    and the others load. `detach` leaves `raw` open (standard input)."""
    if raw is None:
        yield None
        return
    stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield stream
    finally:
        if detach:
            stream.detach()


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
