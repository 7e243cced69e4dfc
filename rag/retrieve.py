"""Stage 4: hybrid retrieval: BM25 and dense search, fused by reciprocal rank, near-duplicates removed.

BM25 catches the rare names and numbers that a small embedding model blurs; dense search catches
paraphrases that share no words with the article. Reciprocal-rank fusion needs no score calibration
between the two, which matters because their scores live on unrelated scales.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from rag.settings import Settings
from rag.sparse import tokenize
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.embeddings import Embedder
    from rag.index import ArticleIndex

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Candidate:
    """A chunk on its way through fusion, with what each retriever thought of it."""

    chunk: Chunk
    fused: float = 0.0
    shingles: frozenset[int] = field(default_factory=frozenset)


@lru_cache(maxsize=8192)
def shingles(text: str, n: int = 3) -> frozenset[int]:
    """The text's word n-grams, hashed: comparing sets of ints is several times cheaper than sets of
    tuples of strings, and de-duplication compares every candidate with every one kept."""
    words = [w.lower() for w in _WORD.findall(text)]
    return frozenset(hash(tuple(words[i : i + n])) for i in range(max(len(words) - n + 1, 1)))


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


class HybridRetriever:
    def __init__(self, index: ArticleIndex, embedder: Embedder, settings: Settings) -> None:
        self.index = index
        self.embedder = embedder
        self.settings = settings

    def coverage(self, query: str, texts: list[str]) -> float:
        """IDF-weighted share of the query's terms that occur in the texts (0..1).

        An on-topic question the articles cannot answer usually hinges on a term they never use
        ("the Pope", "a hotel"); this is what exposes it when the rest of the question matches well.
        """
        terms = set(tokenize([query])[0])
        if not terms:
            return 0.0
        present = set(tokenize([" ".join(texts)])[0])
        weights = {t: self.index.idf(t) for t in terms}
        return sum(w for t, w in weights.items() if t in present) / sum(weights.values())

    def sparse_search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
        return self.index.sparse_search(query, k)

    def search(self, query: str, limit: int | None = None) -> list[Candidate]:
        """Up to ``limit`` (default: settings.top_k) fused, de-duplicated candidates, best first."""
        self.index.refresh()  # read the latest committed state, whoever committed it
        k = self.settings.candidates
        query_vector = self.embedder.embed_query(query)
        pool: dict[tuple[str, int], Candidate] = {}
        for rank, (chunk, _similarity) in enumerate(self.index.dense_search(query_vector, k)):
            cand = pool.setdefault((chunk.article_id, chunk.index), Candidate(chunk))
            cand.fused += 1.0 / (self.settings.rrf_k + rank + 1)
        for rank, (chunk, _score) in enumerate(self.sparse_search(query, k)):
            cand = pool.setdefault((chunk.article_id, chunk.index), Candidate(chunk))
            cand.fused += self.settings.sparse_weight / (self.settings.rrf_k + rank + 1)
        ranked = sorted(pool.values(), key=lambda c: c.fused, reverse=True)
        limit = limit or self.settings.top_k
        distinct = self._drop_near_duplicates(ranked, self.settings.mmr_pool + limit)
        return self._diversify(distinct, limit)

    def _diversify(self, ranked: list[Candidate], limit: int) -> list[Candidate]:
        """Maximal marginal relevance: each next passage trades relevance against resemblance to those
        already chosen, so a question spanning two articles gets passages from both."""
        lam = self.settings.mmr_lambda
        if len(ranked) <= 1 or lam >= 1.0:
            return ranked[:limit]
        vectors = self.index.chunk_vectors([c.chunk for c in ranked])
        similarity = vectors @ vectors.T
        top = ranked[0].fused
        relevance = np.array([c.fused / top for c in ranked])
        chosen = [0]
        while len(chosen) < min(limit, len(ranked)):
            resemblance = similarity[:, chosen].max(axis=1)
            value = lam * relevance - (1 - lam) * resemblance
            value[chosen] = -np.inf
            chosen.append(int(value.argmax()))
        return [ranked[i] for i in chosen]

    def _drop_near_duplicates(self, ranked: list[Candidate], limit: int) -> list[Candidate]:
        """Keep the best of each group of passages that say the same thing (or overlap heavily)."""
        kept: list[Candidate] = []
        for cand in ranked:
            if len(kept) == limit:
                break
            cand.shingles = shingles(cand.chunk.text)
            if not any(self._same_text(cand, other) for other in kept):
                kept.append(cand)
        return kept

    def _same_text(self, a: Candidate, b: Candidate) -> bool:
        if a.chunk.article_id == b.chunk.article_id:
            overlap = min(a.chunk.end, b.chunk.end) - max(a.chunk.start, b.chunk.start)
            shorter = min(a.chunk.end - a.chunk.start, b.chunk.end - b.chunk.start)
            if overlap > self.settings.same_article_overlap * shorter:
                return True
        return jaccard(a.shingles, b.shingles) > self.settings.dedup_threshold
