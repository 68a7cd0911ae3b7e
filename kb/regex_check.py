"""Whether Chroma's engine takes a `$regex` pattern, decided before the store is asked.

Chroma parses and compiles patterns with Rust's regex crate: no look-around, atomic groups
or backreferences, but \\p{L}, \\z and (?<name>...), and a compiled size of at most 10 MiB
(a{1000000} is refused). Python's re differs both ways; flpc binds that crate. Chroma also
refuses byte patterns: any class (\\d, [a-z], (?i)k) where a `(?-u)` flag turned Unicode off.
"""

from __future__ import annotations

FLAG_CHARS = set("imsuxRU-")
BYTE_PATTERN = "Unicode mode cannot be turned off ((?-u)): Chroma refuses byte patterns"


def regex_problem(pattern: str) -> str | None:
    """Why Chroma's engine refuses a $regex pattern, or None if it takes it."""
    import flpc  # loaded on the first $regex only

    try:
        flpc.compile(pattern)
    except ValueError as exc:
        return str(exc).strip().splitlines()[-1].removeprefix("error: ")
    finally:
        flpc.purge()  # flpc keeps every compiled pattern (megabytes each) until purged
    return BYTE_PATTERN if turns_unicode_off(pattern) else None


def turns_unicode_off(pattern: str) -> bool:
    """True if a flag group outside a class and unescaped clears `u`: `(?-u)`, `(?i-su:...)`.

    Stricter than Chroma for a group holding only literals (`(?-u:a)` matches as `a` does),
    which is never needed; exact for every pattern that can match differently.
    """
    i, depth = 0, 0  # depth: nesting of [...] classes, where `(?` is literal text
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            depth += 1
            if pattern.startswith("^", i + 1):
                i += 1
            if pattern.startswith("]", i + 1):
                i += 1  # a `]` first in a class is literal
        elif char == "]" and depth:
            depth -= 1
        elif not depth and pattern.startswith("(?", i):
            end = min((j for j in (pattern.find(":", i), pattern.find(")", i)) if j > 0), default=i)
            flags = pattern[i + 2 : end]  # "<name>..." or "P<name>..." is a named group
            _, minus, cleared = flags.partition("-")
            if minus and "u" in cleared and set(flags) <= FLAG_CHARS:
                return True
        i += 1
    return False
