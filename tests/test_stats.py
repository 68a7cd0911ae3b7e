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
