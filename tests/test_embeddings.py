"""The embedder: normalized 384-d vectors from the packaged model, a stable fingerprint."""

from __future__ import annotations

import json

import numpy as np

from kb.config import Settings
from kb.embeddings import Embedder
from kb.fingerprint import MEMO_FILE, model_fingerprint


def test_vectors_are_normalized_and_384_dimensional(embedder) -> None:
    vectors = embedder.embed_documents(["one text", "another, longer text about cats"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 384)


def test_it_meets_the_protocol_and_names_the_model(embedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.max_tokens == 256
    assert embedder.fingerprint == model_fingerprint(embedder.path)
    # and remembered in the ONNX cache, so the next process start does not hash 90 MB
    memo = json.loads((Settings().onnx_cache / MEMO_FILE).read_text())
    assert memo[str(embedder.path.resolve())]["fingerprint"] == embedder.fingerprint


def test_paraphrases_score_higher_than_unrelated_text(embedder) -> None:
    q = embedder.embed_queries(["A feline rested on the rug"])[0]
    cat, stocks = embedder.embed_documents(["The cat sat on the mat", "stock market crash"])
    assert float(q @ cat) > 0.5 > float(q @ stocks)


def test_tokens_point_into_the_text_and_mark_word_starts(embedder) -> None:
    text = "Tokenizers split words into pieces."
    tokens = embedder.tokens(text)
    spans = tokens.offsets
    assert text[spans[0][0] : spans[0][1]].lower() == "token"
    assert spans[-1][1] == len(text)
    words = [text[a:b] for (a, b), first in zip(spans, tokens.starts, strict=True) if first]
    assert [w.lower() for w in words] == ["token", "split", "words", "into", "pieces", "."]
