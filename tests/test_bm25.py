"""The in-memory BM25 ranks like SQLite FTS5 (which it replaces on the search path)."""

from __future__ import annotations

import json
import random
import sqlite3
import threading

import numpy as np
import pytest

from kb.bm25 import TF_CAP, Bm25
from kb.keyword import query_terms, query_tokens
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore
from kb.tokens import TOKENIZER, token_lists, tokens
from tests.conftest import DATA


def test_tokens_fold_case_and_diacritics_and_stem_like_fts5() -> None:
    assert tokens("Running Naïve CAFÉS, re-indexing e_mail!") == [
        "run", "naiv", "cafe", "re", "index", "e", "mail",
    ]  # fmt: skip


def fts5_tokens(texts: list[str]) -> list[list[str]]:
    """Each text's tokens as an FTS5 table with the keyword index's tokenizer holds them."""
    db = sqlite3.connect(":memory:")
    db.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")  # bytes cut by stems
    db.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize = '{TOKENIZER}')")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
    db.executemany("INSERT INTO t (rowid, x) VALUES (?, ?)", enumerate(texts, 1))
    found: list[list[str]] = [[] for _ in texts]
    for doc, term in db.execute("SELECT doc, term FROM v ORDER BY doc, offset"):
        found[doc - 1].append(term)
    return found


# each was tokenized otherwise in memory than by FTS5: 2-letter words (stemmed: js -> j),
# Porter's C rules (methodology -> methodolog; the Snowball porter stops at methodologi),
# compatibility characters (NFKD made file of the ligature), byte-wise stems of non-ASCII
TRICKY = [
    "JS", "vs", "us", "OS", "eed", "a" * 70 + "ing", "methodology", "possibly", "analogies",
    "x86_64", "snake_case", "ﬁle", "x²", "\uff27\uff30\uff35", "café", "cafe\u0301",
    "nai\u0308ve", "Straße",
    "İstanbul", "µs", "Ωmega", "ÆON", "œuvre", "Łódź", "½", "①", "日本語", "Привет", "ά",
    "don't", "U.S.A.", "co-operate", "a\u200bb", "mañana", "©x", "\ue000abc",
    "a丸ed", "ma\ue000ed", "\uf000ing",
]  # fmt: skip


def test_tokens_are_the_fts5_tables() -> None:
    rng = random.Random(3)
    alphabet = "abcdefyzABXYZ019 _-'.,éüßøłñÆœﬁ²½µΩάПрй日\u0301\u0308\u200b\u00a0©—"
    texts = TRICKY + ["".join(rng.choices(alphabet, k=rng.randint(1, 30))) for _ in range(3000)]
    assert [tokens(text) for text in texts] == fts5_tokens(texts)


def test_texts_tokenized_together_get_the_fts5_tables_tokens() -> None:
    """`token_lists` asks FTS5 once for all the texts' new runs (a mirror's load, a write):
    runs shared by several texts, runs seen before and new ones, long runs not remembered."""
    rng = random.Random(5)
    alphabet = "ghijkmnGHJ2345 _-'.,àçêöşžÅØĳ³¼ΣλБжю月\u0300\u200d\u00a0®\u2013"
    runs = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(400)]
    texts = [" ".join(rng.choices(runs, k=rng.randint(0, 12))) for _ in range(2000)]
    texts += ["", " ", "b" * 90 + "ing " + "b" * 90 + "ing", *TRICKY]
    assert token_lists(texts) == fts5_tokens(texts)
    assert token_lists(texts[::-1]) == fts5_tokens(texts)[::-1]  # every run now known
    assert token_lists([]) == []


def test_query_terms_are_single_tokens() -> None:
    """`snake_case` was one query term: a phrase to FTS5, two OR terms in memory."""
    assert query_terms("is_valid snake_case JS") == ["valid", "snake", "case", "js"]
    assert query_tokens("Straße methodology") == ["straß", "methodolog"]


def test_scores_removals_and_masks() -> None:
    index = Bm25()
    for row, text in enumerate(["red apples", "green apples and pears", "red red wine"]):
        index.add(row, text)
    rows, scores = index.search(tokens("red"), 10)
    assert rows.tolist() == [2, 0]  # two occurrences beat one
    assert scores[0] > scores[1] > 0
    index.remove(2)
    assert index.search(tokens("red"), 10)[0].tolist() == [0]
    mask = np.array([False, True, True])
    assert index.search(tokens("apples"), 10, mask)[0].tolist() == [1]
    assert not index.search(tokens("nothing"), 10)[0].size
    with pytest.raises(ValueError, match="in order"):
        index.add(7, "rows come in order")


def test_removed_rows_leave_the_statistics_of_an_index_built_without_them() -> None:
    """Document frequencies, the live count and the average length are the live rows' only:
    after removals (and after adds that follow them) every live row scores as it does in an
    index that never held the removed rows."""
    texts = [f"t{i} {'oak ' * (1 + i % 3)}{'elm ' if i % 4 else 'fir '}ash" for i in range(80)]
    more = [f"m{i} oak fir {'elm' * (i % 2)}" for i in range(20)]
    gone = {3, 8, 40, 41, 79}
    index = Bm25()
    index.add_many(0, texts)
    for row in sorted(gone):
        index.remove(row)
    queries = ("oak", "fir elm", "ash t7 oak")
    for query in queries:  # counted once, then from the per-term count kept
        index.search(tokens(query), 100)
    index.add_many(len(texts), more)  # new postings: counted again
    index.remove(81)  # a removal: counted again
    kept = [row for row in range(len(texts) + len(more)) if row not in gone | {81}]
    fresh = Bm25()
    fresh.add_many(0, [(texts + more)[row] for row in kept])
    for query in queries:
        rows, scores = index.search(tokens(query), 100)
        want_rows, want_scores = fresh.search(tokens(query), 100)
        assert rows.tolist() == [kept[row] for row in want_rows]
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_a_term_frequency_above_the_cap_counts_as_the_cap() -> None:
    capped, exact = Bm25(), Bm25()
    capped.add_many(0, ["x " * (TF_CAP + 4465), "x y"])
    exact.add_many(0, ["x " * TF_CAP + "y " * 4465, "x y"])
    got, want = capped.search(["x"], 2), exact.search(["x"], 2)
    assert got[0].tolist() == want[0].tolist() == [0, 1]
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


@pytest.fixture
def seeded(store: KnowledgeStore, seed_docs: list[DocumentIn]) -> KnowledgeStore:
    store.add(seed_docs)
    store.replica.wait_loaded()
    return store


def test_rankings_agree_with_fts5_on_the_seed_queries(seeded: KnowledgeStore) -> None:
    mirror = seeded.replica.current_mirror()
    assert mirror is not None
    queries = [
        json.loads(line)["query"]
        for line in (DATA / "eval" / "queries.jsonl").read_text().splitlines()
    ]
    agree, gaps = 0, []
    for query in queries:
        fts5 = seeded.keyword.search(query, 10)
        rows, scores = mirror.keyword(query_tokens(query), 10)
        ours = [(mirror.ids[row], float(score)) for row, score in zip(rows, scores, strict=True)]
        agree += [h.record_id for h in fts5] == [record_id for record_id, _ in ours]
        gaps += [
            abs(a.score - score) / a.score
            for a, (record_id, score) in zip(fts5, ours, strict=False)
            if a.record_id == record_id
        ]
    assert agree >= 0.95 * len(queries)
    assert max(gaps) < 0.01  # same formula, same statistics: scores match to within 1%


def test_adding_in_batches_scores_as_adding_one_by_one() -> None:
    texts = [f"row {i} {'apple ' * (i % 4)}pear {'plum' if i % 3 else ''}" for i in range(300)]
    single, batched = Bm25(), Bm25()
    for row, text in enumerate(texts):
        single.add(row, text)
    for first in range(0, len(texts), 64):
        batched.add_many(first, texts[first : first + 64])
    for row in (5, 77, 299):
        single.remove(row)
        batched.remove(row)
    for query in ("apple", "plum pear", "row 12 apple"):
        a_rows, a_scores = single.search(tokens(query), 50)
        b_rows, b_scores = batched.search(tokens(query), 50)
        assert a_rows.tolist() == b_rows.tolist()
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6)
    with pytest.raises(ValueError, match="in order"):
        batched.add_many(0, ["rows come in order"])


def test_searches_during_writes_see_whole_rows_only() -> None:
    """Searches take no lock: while rows are added (growing every column many times) and
    removed, each search returns rows that existed, once each, with finite positive scores;
    afterwards the index ranks as one built in one go."""
    index, texts = Bm25(), [f"common {'rare ' * (i % 5)}word{i % 50}" for i in range(6000)]
    problems: list[str] = []
    done = threading.Event()

    def search() -> None:
        while not done.is_set():
            size = index.size
            rows, scores = index.search(tokens("common rare word7"), 40)
            if rows.size and (rows.max() >= index.size or len(set(rows.tolist())) != rows.size):
                problems.append(f"bad rows {rows.tolist()} at size {size}")
            if not np.all(np.isfinite(scores)) or np.any(scores <= 0):
                problems.append(f"bad scores {scores.tolist()}")

    readers = [threading.Thread(target=search) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for first in range(0, len(texts), 7):
            index.add_many(first, texts[first : first + 7])
            if first % 70 == 0:
                index.remove(first)
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert not problems, problems[:3]
    fresh = Bm25()
    fresh.add_many(0, texts)
    for row in range(0, len(texts), 70):
        fresh.remove(row)
    for query in ("common rare word7", "word49", "rare"):
        got, want = index.search(tokens(query), 30), fresh.search(tokens(query), 30)
        assert got[0].tolist() == want[0].tolist()
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
