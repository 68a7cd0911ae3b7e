"""Chunking: windows within the model's limit, overlapping, joined back exactly."""

from __future__ import annotations

import itertools
import random
import re
import string

import pytest

from kb.chunking import Chunk, Tokens, join, split


def words(text: str) -> Tokens:
    """A token a word or a punctuation mark, each a word of its own."""
    spans = [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]
    return Tokens(spans, [True] * len(spans))


SAMPLE = " ".join(f"Sentence {i} has a few words in it." for i in range(200))


def test_short_text_is_one_chunk() -> None:
    assert [c.text for c in split("just a few words", words("just a few words"), 10, 2)] == [
        "just a few words"
    ]


@pytest.mark.parametrize(("window", "overlap"), [(50, 0), (50, 10), (64, 32), (7, 3)])
def test_join_rebuilds_the_text_exactly(window: int, overlap: int) -> None:
    text = "  leading space\n\n" + SAMPLE + "\ttrailing  "
    chunks = split(text, words(text), window, overlap)
    assert len(chunks) > 1
    assert join(chunks) == text
    for chunk in chunks:
        assert len(words(chunk.text)) <= window
        assert text[chunk.start : chunk.start + len(chunk.text)] == chunk.text


def test_neighbours_overlap() -> None:
    chunks = split(SAMPLE, words(SAMPLE), 60, 15)
    for first, second in itertools.pairwise(chunks):
        assert second.start < first.start + len(first.text)


def test_a_cut_at_a_single_line_break_still_overlaps() -> None:
    """A line break is a place to cut, not a paragraph break: the chunks on either side of
    it share the overlap as at any other cut (the overlap tests had no line breaks)."""
    text = "\n".join(" ".join(["word"] * 35) for _ in range(6))
    chunks = split(text, words(text), 40, 10)
    assert len(chunks) > 1
    for first, second in itertools.pairwise(chunks):
        assert second.start < first.start + len(first.text)


def test_windows_prefer_line_ends_in_text_without_punctuation() -> None:
    """A list or headings: chunks end at a line end, not in the middle of a line."""
    text = "\n".join(f"item {i} " + " ".join(["w"] * 7) for i in range(40))
    chunks = split(text, words(text), 50, 0)
    assert all(c.text.endswith("\n") for c in chunks[:-1]), [c.text[-15:] for c in chunks]


def test_windows_prefer_sentence_ends() -> None:
    chunks = split(SAMPLE, words(SAMPLE), 60, 0)
    assert all(chunk.text.rstrip().endswith(".") for chunk in chunks[:-1])


def test_the_real_tokenizer_keeps_chunks_inside_the_model_window(embedder) -> None:
    text = " ".join(["Transformers use self-attention over word pieces."] * 300)
    window = embedder.max_tokens - 2
    chunks = split(text, embedder.tokens(text), window, 32)
    assert join(chunks) == text
    for chunk in chunks:
        assert len(embedder.tokens(chunk.text)) <= window


def test_windows_prefer_paragraph_breaks() -> None:
    paragraphs = [" ".join(["word"] * n) + "." for n in (30, 25, 40, 20)]
    text = "\n\n".join(paragraphs)
    chunks = split(text, words(text), 60, 0)
    assert [c.text.strip() for c in chunks[:2]] == [
        paragraphs[0] + "\n\n" + paragraphs[1],
        paragraphs[2],
    ]


CJK = "机器学习是人工智能的一个分支它使计算机能够从数据中学习" * 20
HYPHENS = "-".join(["gradient", "descent", "index", "vector", "chunk", "token"] * 80)
URL = "https://example.com/" + "/".join(f"seg{i}-{i * 7919 % 99991}" for i in range(300))
NUMBERS = " ".join(str(i * 982451653 % 10**12) for i in range(500))
WINDOWS = [(254, 32), (64, 32), (32, 16), (16, 8)]


def shared_tokens(spans: list[tuple[int, int]], first: Chunk, second: Chunk) -> int:
    end = first.start + len(first.text)
    return sum(1 for start, stop in spans if start >= second.start and stop <= end)


@pytest.mark.parametrize(("window", "overlap"), WINDOWS)
def test_ideographs_are_words_so_neighbours_share_exactly_the_overlap(
    window: int, overlap: int
) -> None:
    spans = [(i, i + 1) for i in range(len(CJK))]  # one token an ideograph, as BERT's
    chunks = split(CJK, Tokens(spans, [True] * len(spans)), window, overlap)  # each a word
    assert join(chunks) == CJK
    assert [shared_tokens(spans, a, b) for a, b in itertools.pairwise(chunks)] == [overlap] * (
        len(chunks) - 1
    )


@pytest.mark.parametrize(
    "text", [CJK, HYPHENS, URL, NUMBERS], ids=["cjk", "hyphens", "url", "numbers"]
)
@pytest.mark.parametrize(("window", "overlap"), WINDOWS)
def test_a_phrase_of_overlap_pieces_on_a_cut_is_whole_in_a_chunk(
    embedder, text: str, window: int, overlap: int
) -> None:
    tokens = embedder.tokens(text)
    spans = tokens.offsets
    chunks = split(text, tokens, window, overlap)
    assert join(chunks) == text
    for a, b in itertools.pairwise(chunks):
        assert overlap <= shared_tokens(spans, a, b) <= 2 * overlap
    ends = [(c.start, c.start + len(c.text)) for c in chunks]
    for i in range(len(spans) - overlap + 1):
        phrase = (spans[i][0], spans[i + overlap - 1][1])
        assert any(start <= phrase[0] and phrase[1] <= end for start, end in ends), phrase


def random_words(seed: int, count: int, alphabet: str, longest: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        "".join(rng.choice(alphabet) for _ in range(rng.randint(20, longest))) for _ in range(count)
    )


LONG_WORDS = {
    # seeds where a chunk of the old split (back at most 16 pieces to a word's start)
    # started inside a word and, tokenized alone, took 255 pieces
    "letters": random_words(22, 200, string.ascii_lowercase, 99),
    "letters 2": random_words(17, 200, string.ascii_lowercase, 99),
    "base64": random_words(2, 100, string.ascii_letters + string.digits + "+/", 99).replace(
        " ", ""
    ),
    "hex": random_words(3, 200, "0123456789abcdef", 60),
}


@pytest.mark.parametrize("name", LONG_WORDS)
@pytest.mark.parametrize(("window", "overlap"), [(254, 32), (254, 0), *WINDOWS[1:]])
def test_every_chunk_tokenized_alone_fits_the_window(
    embedder, name: str, window: int, overlap: int
) -> None:
    """A chunk that starts inside a word has the word's rest tokenized anew, which can take
    more pieces than its slice of the whole text; the chunk still fits."""
    text = LONG_WORDS[name]
    chunks = split(text, embedder.tokens(text), window, overlap)
    assert join(chunks) == text
    assert max(len(embedder.tokens(c.text)) for c in chunks) <= window


@pytest.mark.parametrize("text", [URL, HYPHENS, LONG_WORDS["letters"], LONG_WORDS["base64"]])
def test_at_the_default_window_chunks_start_at_a_word(embedder, text: str) -> None:
    """Words here are shorter than a quarter of a chunk, so each chunk starts at a word's
    first piece: tokenized alone it gives the very pieces it had in the whole text."""
    tokens = embedder.tokens(text)
    spans = tokens.offsets
    for chunk in split(text, tokens, 254, 32):
        end = chunk.start + len(chunk.text)
        inside = [
            (s - chunk.start, e - chunk.start) for s, e in spans if s >= chunk.start and e <= end
        ]
        assert embedder.tokens(chunk.text).offsets == inside


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ("self-attention", [True, True, True]),  # punctuation parts words
        ("机器学", [True, True, True]),  # each ideograph is a word
        ("l'e\u0301te\u0301", [True, True, True, False]),  # 'et' '##e': accents join
        ("ab\x0ccd", [True, False]),  # 'abc' '##d': a dropped control character joins
        ("ab\u00a0cd ab\u2028cd", [True, True, True, True]),  # other spaces part words
        ("x²y a€b", [True, False, False, True, False, False]),  # symbols are letters
        ("한국", [True, False, False, False, False, False]),  # a syllable's letters: one span
    ],
)
def test_word_starts_are_the_tokenizers(embedder, text: str, starts: list[bool]) -> None:
    """A chunk starts at a word only where the tokenizer's word ids start one (for WordPiece,
    a piece without '##', or a syllable's first letter)."""
    assert embedder.tokens(text).starts == starts
