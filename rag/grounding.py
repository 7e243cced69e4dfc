"""Check a generated answer against the passages it cites, and turn its ``[n]`` markers into citations.

A language model's markers are claims, not facts. For every sentence of the reply we keep a marker only
if it names a passage that was given and that passage holds a sentence saying much the same thing (by
meaning, or by the claim's own words). The citation then quotes that passage sentence verbatim, with
its offsets, exactly like the extractive path: the reader can check every claim. Markers that point
nowhere, or to a passage that does not support the sentence, are removed; a sentence left with no
citation is flagged (or dropped, by setting); a reply left with no supported sentence is not used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rag.answer import overlap, quote
from rag.chunking import sentence_spans
from rag.prompts import NOT_FOUND_REPLY
from rag.sparse import tokenize
from rag.types import Citation, Passage, Span

if TYPE_CHECKING:
    from rag.embeddings import Embedder
    from rag.index import ArticleIndex
    from rag.settings import Settings

# [2], [1, 3], [1][3]: a marker group holds one or more passage numbers.
_MARKER = re.compile(r"\s*\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_LEADING_MARKERS = re.compile(r"^(?:\s*\[\d+(?:\s*[,;]\s*\d+)*\])+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?…])")


@dataclass
class Claim:
    """One sentence of the reply: its text without markers, and the passage numbers it cites."""

    text: str
    cited: list[int]
    marker_at: int  # where in ``text`` the first marker stood (-1: none), so new markers go back there


@dataclass
class Support:
    """The passage sentence that best backs a claim, and how well."""

    article_id: str
    span: Span
    score: float


@dataclass
class Grounded:
    """The checked reply: text with renumbered markers, the citations they point to, and what was cut."""

    text: str
    citations: list[Citation]
    uncited: list[str] = field(default_factory=list)
    removed_markers: int = 0
    abstained: bool = False


def split_claims(reply: str) -> list[Claim]:
    """Sentences of the reply; a marker group opening a sentence belongs to the one before it."""
    pieces = [reply[s.start : s.end] for s in sentence_spans(reply)]
    merged: list[str] = []
    for piece in pieces:
        leading = _LEADING_MARKERS.match(piece)
        if leading and merged:
            merged[-1] += leading.group(0)
            piece = piece[leading.end() :].strip()
        if piece:
            merged.append(piece)
    claims = []
    for sentence in merged:
        numbers = [int(n) for m in _MARKER.finditer(sentence) for n in re.split(r"[,;]", m.group(1))]
        first = _MARKER.search(sentence)
        text = _MARKER.sub("", sentence)
        claims.append(Claim(text.strip(), list(dict.fromkeys(numbers)), first.start() if first else -1))
    return claims


def is_abstention(reply: str) -> bool:
    return reply.strip().upper().rstrip(".").startswith(NOT_FOUND_REPLY)


class Grounder:
    """Resolves and checks citations against the cited passages' sentences, each embedded on its own.

    The index's sentence vectors are read in their passage's context, which is what ranking answer
    sentences wants; a citation check compares a claim with what one sentence says, like with like.
    The few sentences of the cited passages cost milliseconds beside an LLM call (and are cached).
    """

    def __init__(self, index: ArticleIndex, embedder: Embedder, settings: Settings) -> None:
        self.index = index
        self.embedder = embedder
        self.settings = settings

    def support(self, claim: str, claim_vector: np.ndarray, passage: Passage) -> Support | None:
        """The sentence of ``passage`` that best backs ``claim``, if any backs it well enough."""
        article = self.index.articles.get(passage.article_id)
        if article is None:
            return None
        indices = article.sentences_in(passage.start, passage.end)
        if not indices:
            return None
        texts = [article.text[article.sentences[i][0] : article.sentences[i][1]] for i in indices]
        meaning = self.embedder.embed_cached(texts) @ claim_vector
        claim_tokens = set(tokenize([claim])[0])
        words = [overlap(claim_tokens, tokens) for tokens in tokenize(texts)]
        scores = [max(float(m), w) for m, w in zip(meaning, words, strict=True)]
        best = int(np.argmax(scores))
        if scores[best] < self.settings.llm_min_support:
            return None
        return Support(article.id, Span(*article.sentences[indices[best]]), scores[best])

    def ground(self, reply: str, passages: list[Passage]) -> Grounded:
        if is_abstention(reply):
            return Grounded(text=reply.strip(), citations=[], abstained=True)
        claims = [c for c in split_claims(reply) if c.text]
        if not claims:
            return Grounded(text="", citations=[])
        vectors = self.embedder.embed_cached([c.text for c in claims])
        citations: dict[tuple[str, int, int], Citation] = {}
        sentences: list[str] = []
        uncited: list[str] = []
        removed = 0
        for claim, vector in zip(claims, vectors, strict=True):
            numbers: list[int] = []
            for n in claim.cited:
                found = self.support(claim.text, vector, passages[n - 1]) if 1 <= n <= len(passages) else None
                if found is None:
                    removed += 1
                    continue
                key = (found.article_id, found.span.start, found.span.end)
                if key not in citations:
                    article = self.index.articles[found.article_id]
                    citations[key] = quote(len(citations) + 1, article, found.span, found.score)
                numbers.append(citations[key].n)
            if not numbers:
                uncited.append(claim.text)
                if self.settings.llm_uncited == "drop":
                    continue
            sentences.append(_with_markers(claim, list(dict.fromkeys(numbers))))
        return Grounded(
            text=" ".join(sentences),
            citations=list(citations.values()),
            uncited=uncited,
            removed_markers=removed,
        )


def _with_markers(claim: Claim, numbers: list[int]) -> str:
    """The claim with its checked markers where the model put its first one (before the full stop)."""
    if not numbers:
        return claim.text
    markers = "".join(f"[{n}]" for n in numbers)
    at = claim.marker_at if 0 <= claim.marker_at <= len(claim.text) else len(claim.text)
    head, tail = claim.text[:at].rstrip(), claim.text[at:]
    if not tail.strip() and head[-1:] in ".!?…":  # "… Kyiv. [1]": the marker goes before the full stop
        head, tail = head[:-1], head[-1:]
    return _SPACE_BEFORE_PUNCT.sub(r"\1", f"{head} {markers}{tail}").strip()
