"""Decimals as Chroma holds them: its JSON parse moves some a unit or two in the last place.

Chroma keeps a record's metadata as JSON and parses it back with serde_json's fast float
parser (without `float_roundtrip`): the shortest decimal that names the float (what Python's
repr and Rust's ryu write) is read as its digits as a 64-bit integer, made a float, then
multiplied or divided by a power of ten, two roundings where a correct parse has one. So
`123456789.12345679` is stored, and read back, as `123456789.1234568`: about one decimal in
six between 1e-22 and 1e22 moves, never again once moved; beyond that range some move on
every parse. A filter's numbers go through the same parse, so Chroma finds the number as
given by either spelling it was written with.

Chroma also drops the sign of -0.0. kb's copies (the keyword index's file, the in-memory
mirror whose indexes answer where-clauses) hold each decimal as Chroma does, whether the
record was written by this process or read from Chroma (`records.as_held`), and compare a
filter's decimals after the same parse: every search path, on every process, selects what
Chroma's own filter selects. A document's content hash reads them so too (`records`): sent
again as GET returns it, a document is the same document. `chroma_float` was checked
against Chroma on 11,504 values (every one Chroma moved, 1,859, and filters by either value):
`tests/test_chroma_floats.py` keeps a sample.
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


def held(value: Any) -> Any:
    """A metadata value (or list) with its decimals as Chroma holds them; the value itself
    (the same object) when Chroma holds it as it is."""
    if type(value) is float:
        return chroma_float(value)
    if type(value) is list and any(type(item) is float for item in value):
        items = [chroma_float(item) if type(item) is float else item for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
