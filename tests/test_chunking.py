"""Chunking: windows within the model's limit, overlapping, joined back exactly."""

from __future__ import annotations

import itertools
import re

import pytest

from kb.chunking import join, split


def offsets(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


SAMPLE = " ".join(f"Sentence {i} has a few words in it." for i in range(200))


def test_short_text_is_one_chunk() -> None:
    assert [c.text for c in split("just a few words", offsets("just a few words"), 10, 2)] == [
        "just a few words"
    ]


@pytest.mark.parametrize(("window", "overlap"), [(50, 0), (50, 10), (64, 32), (7, 3)])
def test_join_rebuilds_the_text_exactly(window: int, overlap: int) -> None:
    text = "  leading space\n\n" + SAMPLE + "\ttrailing  "
    chunks = split(text, offsets(text), window, overlap)
    assert len(chunks) > 1
    assert join(chunks) == text
    for chunk in chunks:
        assert len(offsets(chunk.text)) <= window
        assert text[chunk.start : chunk.start + len(chunk.text)] == chunk.text


def test_neighbours_overlap() -> None:
    chunks = split(SAMPLE, offsets(SAMPLE), 60, 15)
    for first, second in itertools.pairwise(chunks):
        assert second.start < first.start + len(first.text)


def test_windows_prefer_sentence_ends() -> None:
    chunks = split(SAMPLE, offsets(SAMPLE), 60, 0)
    assert all(chunk.text.rstrip().endswith(".") for chunk in chunks[:-1])


def test_the_real_tokenizer_keeps_chunks_inside_the_model_window(embedder) -> None:
    text = " ".join(["Transformers use self-attention over word pieces."] * 300)
    window = embedder.max_tokens - 2
    chunks = split(text, embedder.token_offsets(text), window, 32)
    assert join(chunks) == text
    for chunk in chunks:
        assert len(embedder.token_offsets(chunk.text)) <= window


def test_windows_prefer_paragraph_breaks() -> None:
    paragraphs = [" ".join(["word"] * n) + "." for n in (30, 25, 40, 20)]
    text = "\n\n".join(paragraphs)
    chunks = split(text, offsets(text), 60, 0)
    assert [c.text.strip() for c in chunks[:2]] == [
        paragraphs[0] + "\n\n" + paragraphs[1],
        paragraphs[2],
    ]
