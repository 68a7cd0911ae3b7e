"""kb's ranking metrics agree with trec_eval (pytrec_eval) on random runs."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from kb.metrics import evaluate, mrr_at, ndcg_at, recall_at


def random_case(seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(150)]
    qrels, run = {}, {}
    for q in range(40):
        judged = rng.sample(docs, rng.randint(1, 6))
        qrels[f"q{q}"] = {doc: rng.choice([1, 1, 2, 0]) for doc in judged}
        run[f"q{q}"] = rng.sample(docs, 120)
    return qrels, run


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_metrics_match_pytrec_eval(seed: int) -> None:
    qrels, run = random_case(seed)
    scored = {q: {doc: 1000.0 - rank for rank, doc in enumerate(docs)} for q, docs in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.10", "recip_rank", "recall.10", "recall.100"}
    )
    reference = evaluator.evaluate(scored)
    for query, ranking in run.items():
        ref = reference[query]
        relevant = qrels[query]
        assert ndcg_at(ranking, relevant, 10) == pytest.approx(ref["ndcg_cut_10"], abs=1e-6)
        assert recall_at(ranking, relevant, 10) == pytest.approx(ref["recall_10"], abs=1e-6)
        assert recall_at(ranking, relevant, 100) == pytest.approx(ref["recall_100"], abs=1e-6)
        # trec_eval's recip_rank has no cut-off; compare where the first hit is in the top 10
        if mrr_at(ranking, relevant, 10) > 0:
            assert mrr_at(ranking, relevant, 10) == pytest.approx(ref["recip_rank"], abs=1e-6)


def test_evaluate_averages_over_judged_queries() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": ["a", "x"], "q2": ["x", "b"]}
    figures = evaluate(run, qrels)
    assert figures["recall@10"] == 1.0
    assert figures["mrr@10"] == pytest.approx(0.75)
