"""Threshold sweeps on labeled pairs."""

from __future__ import annotations

import pytest

from kb.calibration import recommend, sweep


def test_sweep_counts_precision_and_recall() -> None:
    rows = {round(r.threshold, 2): r for r in sweep([0.9, 0.7, 0.4, 0.2], [1, 1, 0, 0])}
    assert rows[0.5].precision == 1.0
    assert rows[0.5].recall == 1.0
    assert rows[0.3].precision == pytest.approx(2 / 3)
    assert rows[0.8].recall == 0.5


def test_recommend_max_f1_or_a_precision_target() -> None:
    rows = sweep([0.9, 0.8, 0.6, 0.5, 0.3], [1, 1, 0, 1, 0])
    best = recommend(rows)
    assert best.f1 == max(r.f1 for r in rows)
    assert 0.3 < best.threshold <= 0.5
    assert recommend(rows, min_precision=1.0).threshold > 0.6


def test_query_sweep_counts_leaks_and_kept_answers() -> None:
    from kb.calibration import query_sweep

    runs = [(["a", "b"], [0.8, 0.3]), (["c"], [0.45]), (["d", "e"], [0.5, 0.2])]
    wanted = [{"a"}, set(), {"e"}]
    low, high = query_sweep(runs, wanted, k=2, thresholds=[0.1, 0.6])
    assert (low.leaked, low.kept) == (1, 2)
    assert (high.leaked, high.kept) == (0, 1)
