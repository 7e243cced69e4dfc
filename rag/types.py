"""The product's nouns: what goes in (articles, chunks) and what comes out (passages, citations, answers)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, Field

# How Answer.text refers to a citation: "[n]", n being Citation.n. Only outside the quoted text: an
# article's own "[2][7]" inside a quote is article text (see Answer.markers).
CITATION_MARKER = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Marker:
    """One of our citation markers in an answer's text: ``text[start:end] == f"[{n}]"``."""

    start: int
    end: int
    n: int


class Article(BaseModel):
    """A cleaned article. ``text`` is canonical: every offset in the product points into it."""

    id: str = Field(description="Stable id, derived from the file name.")
    title: str
    text: str = Field(description="The cleaned article text.")
    source: str = Field(description="Path of the file it was read from.")
    outlet: str | None = None
    date: str | None = None
    content_hash: str = Field(description="Hash of the cleaned text; a change means re-indexing.")
    stamp: str = Field("", description="File size, mtime and rules version when read (see file_stamp).")


@dataclass(frozen=True)
class Span:
    """A ``[start, end)`` range of character offsets into an article's text."""

    start: int
    end: int


class Chunk(BaseModel):
    """A retrievable span of an article: ``text == article.text[start:end]``."""

    article_id: str
    index: int
    start: int
    end: int
    text: str


class IndexedArticle(Article):
    """An article as the index holds it: its text with the spans of its chunks and sentences."""

    chunks: list[tuple[int, int]] = Field(description="Chunk spans, in text order.")
    sentences: list[tuple[int, int]] = Field(description="Sentence spans, in text order.")

    def chunk(self, index: int) -> Chunk:
        start, end = self.chunks[index]
        return Chunk(article_id=self.id, index=index, start=start, end=end, text=self.text[start:end])

    def iter_chunks(self) -> Iterator[Chunk]:
        return (self.chunk(i) for i in range(len(self.chunks)))

    def sentences_in(self, start: int, end: int) -> list[int]:
        """Indices of the sentences overlapping ``[start, end)``, in text order."""
        first = bisect.bisect_right(self.sentences, start, key=lambda span: span[1])
        found = []
        for i in range(first, len(self.sentences)):
            if self.sentences[i][0] >= end:
                break
            found.append(i)
        return found


class Passage(BaseModel):
    """A retrieved chunk, with the score that ranked it."""

    article_id: str
    title: str
    text: str
    start: int
    end: int
    score: float = Field(description="Fused retrieval score (higher is better).")


class Citation(BaseModel):
    """A verbatim quote backing an answer: ``article(article_id).text[start:end] == quote``."""

    n: int = Field(description="The number used by the [n] marker in the answer text.")
    article_id: str
    title: str
    quote: str
    start: int
    end: int
    score: float = Field(description="How strongly the quote answers the question (0..1).")


class Answer(BaseModel):
    text: str = Field(description="The answer, with [n] markers tied to citations.")
    found: bool = Field(description="False when the articles do not answer the question.")
    confidence: float = Field(
        0.0,
        description="Probability that the quote answers (with the reranker); below the abstention threshold "
        "(settings.min_answer_score, else the fitted one), found=False.",
    )
    citations: list[Citation] = Field(default_factory=list)
    short_answer: str | None = Field(
        None,
        description="The name, place, date or number asked for, cut from the first citation's quote; the "
        "extractive answer's text starts with it (None when the question asks for something else).",
    )
    passages: list[Passage] = Field(default_factory=list, description="Retrieved passages, best first.")
    question: str = Field("", description="The question as asked.")
    search_query: str = Field("", description="The question after follow-up resolution, as searched.")
    generator: str = Field("extractive", description="Which generator wrote the text (RAG_GENERATOR).")
    notice: str | None = Field(
        None, description="Something the reader should know, e.g. the LLM was unreachable and why."
    )
    uncited: list[str] = Field(
        default_factory=list,
        description="Generated sentences that no checked citation supports (shown, but flagged).",
    )

    def markers(self) -> list[Marker]:
        """The ``[n]`` markers the answer's writer put in ``text``. Brackets inside a quoted citation
        (an article's own ``[2][7]`` references) are the article's text, not markers."""
        quoted: list[tuple[int, int]] = []
        for citation in self.citations:
            at = self.text.find(citation.quote) if citation.quote else -1
            while at >= 0:
                quoted.append((at, at + len(citation.quote)))
                at = self.text.find(citation.quote, at + len(citation.quote))
        return [
            Marker(m.start(), m.end(), int(m.group(1)))
            for m in CITATION_MARKER.finditer(self.text)
            if not any(start < m.end() and m.start() < end for start, end in quoted)
        ]


class SkippedFile(BaseModel):
    path: str
    reason: str


class IngestReport(BaseModel):
    """What an ingest did; running it twice in a row reports nothing added, updated or removed."""

    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    skipped: list[SkippedFile] = Field(default_factory=list)
    chunks_embedded: int = 0
    sentences_embedded: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)
