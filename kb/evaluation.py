"""Threshold calibration on labeled pairs: precision, recall and F1 against the threshold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int  # 1 = similar, 0 = not


@dataclass(frozen=True)
class Row:
    threshold: float
    precision: float
    recall: float
    f1: float


def read_pairs(path: str | Path) -> list[Pair]:
    pairs = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                data = json.loads(line)
                if data.get("label") not in (0, 1):
                    raise ValueError(f"{path}:{number}: label must be 0 or 1")
                pairs.append(Pair(str(data["a"]), str(data["b"]), int(data["label"])))
    return pairs


def sweep(scores: Sequence[float], labels: Sequence[int], step: float = 0.01) -> list[Row]:
    """Precision, recall and F1 of 'score >= t means similar' for t from -1 to 1."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    rows = []
    for t in np.round(np.arange(-1.0, 1.0 + step / 2, step), 4):
        predicted = s >= t
        tp = int((predicted & y).sum())
        precision = tp / int(predicted.sum()) if predicted.any() else 1.0
        recall = tp / int(y.sum()) if y.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(Row(float(t), precision, recall, f1))
    return rows


def recommend(rows: Sequence[Row], min_precision: float | None = None) -> Row:
    """Max F1 (the highest threshold among ties), or the lowest reaching min_precision."""
    if min_precision is not None:
        for row in rows:
            if row.precision >= min_precision and row.recall > 0:
                return row
    return max(reversed(rows), key=lambda row: row.f1)
