"""Deterministic synthetic documents: the seed notes' sentences, recombined.

`documents(kind, n)` is a prefix of `documents(kind, m)` for n < m, so every size of a kind
holds the same first documents.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

from bench import ROOT

CORPUS_VERSION = 1
SEED = 20250101
Kind = Literal["short", "paragraph"]
KINDS: tuple[Kind, ...] = ("short", "paragraph")
CATEGORIES = (
    "machine-learning",
    "deep-learning",
    "nlp",
    "databases",
    "search",
    "mlops",
    "security",
    "software-engineering",
)
DIFFICULTIES = ("beginner", "intermediate", "advanced")
TAGS = (
    "gradients", "training", "evaluation", "indexing", "latency", "caching", "testing",
    "deployment", "privacy", "embeddings", "transactions", "scaling", "monitoring", "tokens",
    "regularization", "queries", "refactoring", "encryption", "pipelines", "ranking",
)  # fmt: skip
_FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jon")
_LAST = ("Morgan", "Okafor", "Silva", "Tanaka", "Novak")
AUTHORS = tuple(f"{first} {last}" for first in _FIRST for last in _LAST)
FIRST_DAY = date(2019, 1, 1)
DAYS = (date(2025, 12, 31) - FIRST_DAY).days

# name -> (fields of a kb /query body, the equivalent filter arguments of Chroma's query a
# tutorial would write); "text" passes about 3/5 of the short documents
TEXT = {"$contains": "the"}
FILTERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "none": ({}, {}),
    "selective": ({"filters": {"category": CATEGORIES[0]}}, {"where": {"category": CATEGORIES[0]}}),
    "broad": (
        {"filters": {"difficulty": ["beginner", "intermediate"]}},
        {"where": {"difficulty": {"$in": ["beginner", "intermediate"]}}},
    ),
    "text": ({"where_document": TEXT}, {"where_document": TEXT}),
}
# "varied": another filter on every query, 12 of the 50 authors (about a quarter of the
# documents): kb keeps the masks of the 64 filters used last until the next write
# (kb.mirror.KEPT_MASKS), so a repeated filter measures that cache; these mostly miss it.
VARIED, VARIED_AUTHORS, VARIED_COUNT = "varied", 12, 4096  # the last: bodies a cell cycles
FILTER_NAMES = ("none", "selective", "broad", VARIED, "text")


def filter_for(name: str, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The filter of the `i`th query: FILTERS[name], or for VARIED the `i`th of its sets of
    authors (as a kb /query body's fields, and as Chroma's arguments)."""
    if name != VARIED:
        return FILTERS[name]
    rng = random.Random(f"{SEED}-{VARIED}-{i}")
    authors = sorted(rng.sample(AUTHORS, VARIED_AUTHORS))
    return {"filters": {"author": authors}}, {"where": {"author": {"$in": authors}}}


_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


@cache
def sentences() -> tuple[str, ...]:
    """Every distinct sentence of at least 6 words in data/seed/*.jsonl, in file order."""
    found: list[str] = []
    for path in sorted((ROOT / "data" / "seed").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                text = json.loads(line)["text"]
                found += [s.strip() for s in _SPLIT.split(text) if len(s.split()) >= 6]
    return tuple(dict.fromkeys(found))


def _finish(words: Sequence[str]) -> str:
    text = " ".join(words).rstrip(",;:.!?")
    return text[:1].upper() + text[1:] + "."


def _short(rng: random.Random, pool: Sequence[str]) -> str:
    """12-18 words: the start of one sentence continued by a piece of another."""
    length = rng.randint(12, 18)
    words = rng.choice(pool).split()
    words = words[: rng.randint(min(6, len(words)), min(len(words), length))]
    while len(words) < length:
        other = rng.choice(pool).split()
        start = rng.randrange(max(1, len(other) - 4))
        words += other[start : start + length - len(words)]
    return _finish(words)


def _paragraph(rng: random.Random, pool: Sequence[str]) -> str:
    """130-170 words of whole sentences, the last one cut to length."""
    length = rng.randint(130, 170)
    words: list[str] = []
    while len(words) < length:
        words += rng.choice(pool).split()
    return _finish(words[:length])


def _metadata(rng: random.Random) -> dict[str, Any]:
    return {
        "category": rng.choice(CATEGORIES),
        "difficulty": rng.choice(DIFFICULTIES),
        "author": rng.choice(AUTHORS),
        "date": (FIRST_DAY + timedelta(days=rng.randrange(DAYS + 1))).isoformat(),
        "tags": sorted(rng.sample(TAGS, rng.randint(1, 3))),
    }


def documents(kind: Kind, n: int) -> list[dict[str, Any]]:
    """n documents {"id", "text", "metadata"} of one kind, unique texts, always the same."""
    rng = random.Random(f"{SEED}-{kind}")
    make = _short if kind == "short" else _paragraph
    pool, seen, docs = sentences(), set[str](), []
    while len(docs) < n:
        text = make(rng, pool)
        if text in seen:
            continue
        seen.add(text)
        docs.append({"id": f"b-{kind}-{len(docs)}", "text": text, "metadata": _metadata(rng)})
    return docs


def write_jsonl(docs: Iterable[dict[str, Any]], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for doc in docs:
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@cache
def queries() -> tuple[str, ...]:
    """The natural-language questions of data/eval/queries.jsonl (the `query` field)."""
    return tuple(doc["query"] for doc in read_jsonl(ROOT / "data" / "eval" / "queries.jsonl"))


def digest(docs: Iterable[dict[str, Any]]) -> str:
    """sha256 of documents as write_jsonl writes them: the same texts, ids and metadata give
    the same hash (a changed data/seed or generator gives another)."""
    found = hashlib.sha256()
    for doc in docs:
        found.update((json.dumps(doc, ensure_ascii=False) + "\n").encode())
    return found.hexdigest()


FINGERPRINT_DOCS = 1000  # documents of each kind the fingerprint hashes


@cache
def fingerprint() -> str:
    """A hash of what the synthetic corpus is made of, for every results file: the version,
    the seed, the sentence pool, the queries and the first FINGERPRINT_DOCS of each kind
    (a prefix of every size, see documents)."""
    found = hashlib.sha256(f"{CORPUS_VERSION}-{SEED}\n".encode())
    for sentence in sentences():
        found.update((sentence + "\n").encode())
    for query in queries():
        found.update((query + "\n").encode())
    for kind in KINDS:
        found.update(digest(documents(kind, FINGERPRINT_DOCS)).encode())
    return found.hexdigest()


def passing(docs: Iterable[dict[str, Any]], name: str, i: int = 0, enough: int = 5) -> int:
    """How many documents pass the `i`th filter of `name` (as kb's /query body has it:
    metadata equal to a value or in a list; $contains, a substring of the text), counted up
    to `enough`."""
    fields = filter_for(name, i)[0]
    wanted = {
        key: value if isinstance(value, list) else [value]
        for key, value in fields.get("filters", {}).items()
    }
    text = fields.get("where_document", {}).get("$contains")
    found = 0
    for doc in docs:
        metadata = doc.get("metadata") or {}
        if all(metadata.get(key) in allowed for key, allowed in wanted.items()) and (
            text is None or text in doc["text"]
        ):
            found += 1
            if found >= enough:
                break
    return found
