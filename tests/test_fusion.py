"""Rank fusion: the arithmetic of both methods, ties, and one-sided or empty rankings."""

from __future__ import annotations

import numpy as np
import pytest

from kb.fusion import DENSE_WEIGHT, RRF_K, fuse


def keys(*names: str) -> np.ndarray:
    return np.array(names, dtype=str)


def test_score_fusion_adds_min_max_normalized_sides() -> None:
    fused = fuse(
        keys("a", "b", "c"),
        np.array([0.9, 0.7, 0.5]),
        keys("c", "d"),
        np.array([12.0, 4.0]),
        "score",
    )
    # a: dense 1.0; c: dense 0.0 + keyword 1.0; b: dense 0.5; d: keyword 0.0
    assert fused.values.tolist() == pytest.approx(
        [DENSE_WEIGHT, 1 - DENSE_WEIGHT, DENSE_WEIGHT * 0.5, 0.0]
    )
    assert fused.dense.tolist() == [0, 2, 1, -1]
    assert fused.keyword.tolist() == [-1, 0, -1, 1]


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = fuse(keys("a", "b"), np.array([0.9, 0.8]), keys("b", "a"), np.array([5.0, 1.0]), "rrf")
    both = 1 / (RRF_K + 1) + 1 / (RRF_K + 2)
    assert fused.values.tolist() == pytest.approx([both, both])


def test_equal_scores_on_a_side_share_a_reciprocal_rank() -> None:
    """RRF ranked a side's equal scores by their place in it (id order), so each got another
    1 / (k + rank) and a document tied on BM25 and best on the dense side finished below one
    it beat or tied on both (review helper 90). Equal scores now share the rank 1 + the
    number of better scores (competition ranking)."""
    bm25 = np.array([2.0, 2.0, 2.0, 1.0])
    fused = fuse(keys("z", "m"), np.array([0.9, 0.8]), keys("m", "n", "z", "o"), bm25, "rrf")
    first, second = 1 / (RRF_K + 1), 1 / (RRF_K + 2)
    assert fused.values.tolist() == pytest.approx([2 * first, first + second, first, 1 / 64])
    assert fused.dense.tolist() == [0, 1, -1, -1]  # z, m, n (keyword only), then o
    assert fused.keyword.tolist() == [2, 0, 1, 3]
    # the keyword side's order within its tie changes nothing
    again = fuse(keys("z", "m"), np.array([0.9, 0.8]), keys("z", "n", "m", "o"), bm25, "rrf")
    assert again.values.tolist() == fused.values.tolist()
    assert again.dense.tolist() == fused.dense.tolist()


def test_ties_go_to_the_higher_shown_score_then_the_key() -> None:
    # x tops the dense side, y the keyword side: equal fusion scores
    shown = np.array([0.4, 0.6])
    fused = fuse(keys("x"), np.array([0.4]), keys("y"), np.array([3.0]), "score", shown=shown)
    assert fused.keyword.tolist() == [0, -1]  # y first: it shows 0.6
    fused = fuse(keys("x"), np.array([0.4]), keys("y"), np.array([3.0]), "score")
    assert fused.dense.tolist() == [0, -1]  # no shown scores: by key


def test_one_side_empty_or_both_and_a_limit() -> None:
    empty = np.zeros(0)
    fused = fuse(keys("a", "b", "c"), np.array([3.0, 2.0, 1.0]), keys(), empty, "score", limit=2)
    assert fused.dense.tolist() == [0, 1]
    assert not len(fuse(keys(), empty, keys(), empty, "rrf").values)
    same = fuse(keys("a", "b"), np.array([0.5, 0.5]), keys(), empty, "score")
    assert same.values.tolist() == [DENSE_WEIGHT, DENSE_WEIGHT]  # no spread: both count fully


def test_names_order_ties_that_keys_standing_for_ids_would_order_otherwise() -> None:
    """Document numbers as keys: a tie falls by the ids `names` gives, asked only then."""
    ids = {7: "a-doc", 3: "z-doc", 5: "m-doc"}
    asked: list[list[int]] = []

    def names(numbers: np.ndarray) -> np.ndarray:
        asked.append(numbers.tolist())
        return np.array([ids[n] for n in numbers.tolist()], dtype=str)

    tie = fuse(
        np.array([3, 7]),
        np.array([0.5, 0.5]),
        np.array([], dtype=int),
        np.zeros(0),
        "score",
        shown=np.array([0.5, 0.5]),
        names=names,
    )
    assert tie.dense.tolist() == [1, 0]  # a-doc (7) before z-doc (3), though 3 < 7
    assert asked == [[3, 7]]
    asked.clear()
    fuse(
        np.array([3, 5]),
        np.array([0.9, 0.5]),
        np.array([], dtype=int),
        np.zeros(0),
        "score",
        shown=np.array([0.9, 0.5]),
        names=names,
    )
    assert asked == []  # no tie: no ids looked up
