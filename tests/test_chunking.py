from __future__ import annotations

import itertools

import pytest

from rag.articles import load_articles
from rag.chunking import chunk_article, chunk_spans, sentence_spans
from tests.conftest import CORPUS


def sentences(text: str) -> list[str]:
    return [text[s.start : s.end] for s in sentence_spans(text)]


def test_sentences_respect_abbreviations_and_initials() -> None:
    text = "Dr. Petrova met U.S. officials in Minsk. They spoke for an hour."
    assert sentences(text) == ["Dr. Petrova met U.S. officials in Minsk.", "They spoke for an hour."]


def test_sentences_glued_by_a_scraper_are_separated() -> None:
    text = "The talks ended in conflict.Minsk was chosen as the venue."
    assert sentences(text) == ["The talks ended in conflict.", "Minsk was chosen as the venue."]


def test_line_breaks_end_sentences_and_quotes_stay_attached() -> None:
    text = "Headline Without Stop\nHe said, “We will come.” Then he left!"
    assert sentences(text) == ["Headline Without Stop", "He said, “We will come.”", "Then he left!"]


@pytest.mark.parametrize("size", [200, 700, 1500])
def test_every_chunk_is_a_verbatim_slice_of_its_article(size: int) -> None:
    articles, _ = load_articles([CORPUS], max_bytes=10_000_000)
    for article in articles:
        chunks = chunk_article(article, size, 1)
        assert chunks, article.id
        for chunk in chunks:
            assert chunk.text == article.text[chunk.start : chunk.end]
            assert chunk.text == chunk.text.strip()
        covered = {i for c in chunks for i in range(c.start, c.end)}
        assert all(i in covered for i, ch in enumerate(article.text) if not ch.isspace())


def test_chunks_overlap_by_one_sentence_and_stay_near_the_target_size() -> None:
    text = " ".join(f"Sentence number {i} says something about the talks." for i in range(40))
    spans = chunk_spans(text, 300, 1)
    assert all(s.end - s.start <= 300 for s in spans)
    for a, b in itertools.pairwise(spans):
        assert b.start < a.end  # overlap
        assert text[b.start : a.end].endswith(".")


def test_a_sentence_longer_than_a_chunk_is_split_at_clauses() -> None:
    text = "Intro. " + ", ".join(f"clause {i} of a very long sentence" for i in range(60)) + "."
    spans = chunk_spans(text, 200, 1)
    assert all(s.end - s.start <= 200 for s in spans)
    assert all(text[s.start : s.end] == text[s.start : s.end].strip() for s in spans)
