"""kb.stats.metadata_stats: counts, common values and ranges per metadata key."""

from __future__ import annotations

from kb.stats import metadata_stats


def test_counts_values_list_items_and_ranges() -> None:
    stats = metadata_stats(
        [
            {"category": "a", "n": 3, "tags": ["x", "y"], "date": "2024-05-01"},
            {"category": "a", "n": 1.5, "tags": ["x"], "date": "2023-01-31"},
            {"category": "b", "flag": True},
            None,
        ]
    )
    assert list(stats) == ["category", "date", "flag", "n", "tags"]
    assert stats["category"].documents == 3
    assert stats["category"].values == {"a": 2, "b": 1}
    assert stats["category"].distinct == 2
    assert (stats["category"].min, stats["category"].max) == (None, None)
    assert stats["tags"].documents == 2
    assert stats["tags"].values == {"x": 2, "y": 1}
    assert (stats["n"].min, stats["n"].max) == (1.5, 3)
    assert (stats["date"].min, stats["date"].max) == ("2023-01-31", "2024-05-01")
    assert stats["flag"].values == {"true": 1}


def test_true_and_1_are_different_values() -> None:
    stats = metadata_stats([{"v": 1}, {"v": True}, {"v": 1.0}, {"v": 1}])
    assert stats["v"].values == {"1": 2, "true": 1, "1.0": 1}
    assert stats["v"].distinct == 3
    assert (stats["v"].min, stats["v"].max) == (None, None)  # a boolean among numbers: no range
    numbers = metadata_stats([{"v": 1}, {"v": 1.0}, {"v": 7}])["v"]
    assert (numbers.min, numbers.max) == (1, 7)


def test_a_range_of_large_integers_keeps_them_exact() -> None:
    """min and max were floats: 2**63 - 1 came back as 9.223372036854776e18 (review helper
    30)."""
    big = metadata_stats([{"id": 2**63 - 1}, {"id": 2**53 + 1}])["id"]
    assert (big.min, big.max) == (2**53 + 1, 2**63 - 1)
    assert isinstance(big.min, int)
    assert isinstance(big.max, int)
    assert big.model_dump_json() == (
        f'{{"documents":2,"distinct":2,"values":{{"{2**63 - 1}":1,"{2**53 + 1}":1}},'
        f'"min":{2**53 + 1},"max":{2**63 - 1}}}'
    )
