"""Decimals as Chroma holds them: its JSON parse moves some a unit or two in the last place.

Chroma keeps a record's metadata as JSON and parses it back with serde_json's fast float
parser (without `float_roundtrip`): the shortest decimal that names the float (what Python's
repr and Rust's ryu write) is read as its digits as a 64-bit integer, made a float, then
multiplied or divided by a power of ten, two roundings where a correct parse has one. So
`123456789.12345679` is stored, and read back, as `123456789.1234568` (`chroma_float`):
about one decimal in six moves. Most moved values stay put at the next parse, but not all:
a third of the moved decimals below 1e-6 or beyond 1e22 (one such decimal in ten; a few
between 1e-6 and 1) move again, and again at every parse (each PATCH, which writes the other
keys back, moved them a unit further), and a Chroma server parses each value twice (the
request, then the stored JSON).

So kb writes each decimal as a float the parse leaves as it is (`stable_float`): the value
itself when Chroma keeps it, else Chroma's reading of it when that one stays put (what
Chroma held before kb did this: stores written earlier keep their numbers), else the
nearest float that stays put (a few units in the last place away). Written so, a decimal
never moves again, however often it is written back and parsed, and a server holds what
an embedded store holds. A filter's decimals are turned into the same floats before they
reach Chroma or kb's copies, so a filter on the number as given, or as GET shows it, finds
it on every path. Chroma also drops the sign of -0.0.

kb's copies (the keyword index's file, the in-memory mirror whose indexes answer
where-clauses) hold each decimal as written (`records.as_held`), whether the record was
written by this process or read from Chroma, and a document's content hash reads them so
too (`records`): sent again as GET returns it, a document is the same document.
`chroma_float` was checked against Chroma on 11,504 values (every one Chroma moved, 1,859,
and filters by either value): `tests/test_chroma_floats.py` keeps a sample.
"""

from __future__ import annotations

import math
from typing import Any

EXACT = 2**53  # a digit string below this is an exact float
EXACT_POWER = 22  # 10**22 is the last power of ten exact as a float
PLAIN = 2**49  # a whole number below this, written "n.0", keeps its value: 10n < 2**53
LARGEST_POWER = 308  # serde_json's table of powers of ten ends at 1e308


def chroma_float(value: float) -> float:
    """`value` as Chroma holds it once written (and compares it in a filter)."""
    if value == 0.0:  # -0.0 too: Chroma reads it back without its sign
        return value if math.copysign(1.0, value) > 0 else 0.0
    if not math.isfinite(value) or (value.is_integer() and -PLAIN < value < PLAIN):
        return value
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    digits = int(whole + fraction)  # a shortest repr has 17 digits at most: a u64 holds it
    power = (int(exponent) if exponent else 0) - len(fraction)
    if digits < EXACT and -EXACT_POWER <= power <= EXACT_POWER:
        return value  # one rounding: the parse is correct, and gives the value back
    parsed = float(digits)
    while power < -LARGEST_POWER and parsed != 0.0:  # serde_json divides by 1e308 first
        parsed /= 1e308
        power += LARGEST_POWER
    if power >= 0:
        parsed *= float(f"1e{power}")
    elif power >= -LARGEST_POWER:
        parsed /= float(f"1e{-power}")
    parsed = -parsed if value < 0 else parsed
    return value if parsed == value else parsed  # unmoved: the value itself (`held`)


STABLE_REACH = 64  # units in the last place searched for a float the parse keeps (<= 42 seen)


def stable_float(value: float) -> float:
    """The float kb writes (and filters with) for `value`: one Chroma's parse keeps as it is,
    `value` itself when it does (the same object)."""
    moved = chroma_float(value)
    if moved is value:
        return value
    if chroma_float(moved) == moved:
        return moved  # Chroma's reading, which stays put: what it held for it before
    down = up = value
    for _ in range(STABLE_REACH):  # the nearest that stays put, the smaller of two as near
        down, up = math.nextafter(down, -math.inf), math.nextafter(up, math.inf)
        for near in (down, up):
            if chroma_float(near) == near:
                return near
    return moved  # not found near (never seen): as before, Chroma's reading


def held(value: Any) -> Any:
    """A metadata value (or list) with its decimals as kb writes them (`stable_float`); the
    value itself (the same object) when Chroma holds it as it is."""
    if type(value) is float:
        return stable_float(value)
    if type(value) is list and any(type(item) is float for item in value):
        items = [stable_float(item) if type(item) is float else item for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
