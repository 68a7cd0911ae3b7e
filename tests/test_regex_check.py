"""Chroma's verdict on $regex patterns, given before the store is asked."""

from __future__ import annotations

import chromadb
import pytest
from chromadb.errors import InternalError, InvalidArgumentError

from kb.errors import ValidationFailed
from kb.filters import compile_filter
from kb.regex_check import BYTE_PATTERN, regex_problem, turns_unicode_off

# Patterns Python's re takes but Chroma's engine (Rust's regex crate) refused with a 503, and
# the reverse; the last four exceed its compiled size limit.
CHROMA_REFUSES = [
    *("foo(?=bar)", "(?!a)", "(?<=a)b", "(?<!x)", "(?>a)", r"(foo) \1", "(?P<n>a)(?P=n)"),
    *("(?#c)a", r"a\Z", r"\0", "a{,3}", "(?a)x", r"\N{BULLET}", "("),
    *("a{1000000}", "(?:a{1000}){1000}", r"\w{1000}", r"\w{400}"),
    *(r"(?-u:\d)", r"(?i-u:k)", r"x(?s-u)[a-z]"),  # byte patterns: a class with Unicode off
]
CHROMA_TAKES = [
    *(r"\p{L}+", r"\pL", r"\P{Greek}", r"a\z", "(?<name>foo)", "[[:alpha:]]+", r"\x{e9}"),
    *("(?U)a+", "a**", "[a--b]", r"\b{start}", "(?i)foo|bar", "a{300000}", r"\w{100}"),
    *(r"(?u)\d", r"[(?-u)]\d", r"\(?-u\)\w", r"(?x-i:u)\w"),  # (?-u) as text, or u kept
]


@pytest.mark.parametrize("pattern", CHROMA_REFUSES)
def test_regexes_chromas_engine_refuses_are_422_naming_the_operator(pattern: str) -> None:
    where_document = {"$or": [{"$contains": "a"}, {"$not_regex": pattern}]}
    with pytest.raises(ValidationFailed, match="Chroma's engine") as caught:
        compile_filter(where_document=where_document)
    assert caught.value.details[0]["field"] == "where_document.$or.1.$not_regex"


@pytest.mark.parametrize("pattern", CHROMA_TAKES)
def test_regexes_chromas_engine_takes_are_not_refused(pattern: str) -> None:
    assert compile_filter(where_document={"$regex": pattern}).where_document == {"$regex": pattern}


def test_regex_verdicts_are_chromas() -> None:
    """kb's check says what Chroma itself says of each pattern (a differential test)."""
    collection = chromadb.EphemeralClient().get_or_create_collection(
        "regex_verdicts", embedding_function=None
    )
    collection.add(ids=["a"], documents=["a text to run the patterns on"], embeddings=[[1.0]])
    for pattern in CHROMA_REFUSES + CHROMA_TAKES:
        try:
            collection.get(where_document={"$regex": pattern}, include=[])
            chroma_takes = True
        except (InvalidArgumentError, InternalError):  # parse error; compiled size too big
            chroma_takes = False
        assert (regex_problem(pattern) is None) == chroma_takes, pattern


def test_a_flag_group_turning_unicode_off_is_refused_with_the_reason() -> None:
    """Stricter than Chroma for literals only: (?-u:a) is refused though it matches as a does."""
    assert regex_problem("(?-u:a)") == BYTE_PATTERN
    with pytest.raises(ValidationFailed, match="byte patterns") as caught:
        compile_filter(where_document={"$regex": r"(?-u)\d+"})
    assert caught.value.details[0]["field"] == "where_document.$regex"


@pytest.mark.parametrize(
    ("pattern", "off"),
    [
        ("(?-u)", True),
        ("(?is-mu:x)", True),
        (r"[]](?-u)", True),  # a ] first in a class is literal, so the class ends after it
        (r"\\(?-u)", True),  # an escaped backslash, then the group
        (r"\(?-u\)", False),  # an escaped parenthesis: text
        ("[[:alpha:](?-u)]", False),  # inside a class: text
        ("(?x-i:u)", False),  # u is the group's text, not a cleared flag
        ("(?<n>a-u)", False),  # a named group whose text is a-u
    ],
)
def test_turns_unicode_off_reads_flag_groups_only(pattern: str, off: bool) -> None:
    assert turns_unicode_off(pattern) is off
