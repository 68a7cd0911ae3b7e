"""Decimals as Chroma holds them: its JSON parse moves some a unit or two in the last place.

Chroma keeps a record's metadata as JSON and parses it back with serde_json's fast float
parser (without `float_roundtrip`): the shortest decimal that names the float (what Python's
repr and Rust's ryu write) is read as its digits as a 64-bit integer, made a float, then
multiplied or divided by a power of ten, two roundings where a correct parse has one. So
`123456789.12345679` is stored, and read back, as `123456789.1234568`: about one decimal in
six between 1e-22 and 1e22 moves, never again once moved; beyond that range some move on
every parse. A filter's numbers go through the same parse, so Chroma finds the number as
given by either spelling it was written with.

kb's copies (the keyword index's file, the in-memory mirror whose indexes answer where-
clauses) hold each decimal as Chroma does, whether the record was written by this process or
read from Chroma, and compare a filter's decimals after the same parse: every search path,
on every process, selects what Chroma's own filter selects. `chroma_float` was checked
against Chroma on 11,504 values (every one Chroma moved, 1,859, and filters by either value):
`tests/test_chroma_floats.py` keeps a sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kb.records import Record

EXACT = 2**53  # a digit string below this is an exact float
EXACT_POWER = 22  # 10**22 is the last power of ten exact as a float
PLAIN = 2**49  # a whole number below this, written "n.0", keeps its value: 10n < 2**53
LARGEST_POWER = 308  # serde_json's table of powers of ten ends at 1e308


def chroma_float(value: float) -> float:
    """`value` as Chroma holds it once written (and compares it in a filter)."""
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
    return -parsed if value < 0 else parsed


def held(value: Any) -> Any:
    """A metadata value (or list) with its decimals as Chroma holds them."""
    if type(value) is float:
        return chroma_float(value)
    if type(value) is list and any(type(item) is float for item in value):
        return [chroma_float(item) if type(item) is float else item for item in value]
    return value


def as_held(records: Sequence[Record]) -> Sequence[Record]:
    """These records, written to Chroma, as it now holds them: a record whose metadata holds
    a decimal the parse moves is copied with the moved value (the others are not copied)."""
    out: list[Record] | None = None
    for i, record in enumerate(records):
        metadata = record.metadata
        moved = {
            k: h for k, v in metadata.items() if type(v) in (float, list) and (h := held(v)) != v
        }
        if moved:
            if out is None:
                out = list(records)
            out[i] = Record(record.id, record.text, {**metadata, **moved}, record.embedding)
    return records if out is None else out
