"""The BM25 side index, persisted next to the manifest and updated at ingest, never per query or start.

Tokenising (lower-casing, stop words, stemming) is most of the cost of a BM25 build, so each article's
tokens are cached under its content hash: an ingest re-tokenises only new and changed articles, then
rebuilds the (cheap) term matrix and saves it. A query process just memory-maps the saved matrix.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from rag.index import IndexedArticle, atomic_write

if TYPE_CHECKING:
    import bm25s

# Words that shape a question but never carry its topic, on top of bm25s' English stop words.
_QUESTION_WORDS = "say said says tell told get got let kind sort many much whether according".split()


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


# bm25s' default token pattern (scikit-learn's): words of two or more word characters.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS) | frozenset(_QUESTION_WORDS)


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased, stop-word-free, stemmed tokens: the same analysis for documents and queries.

    The analysis of ``bm25s.tokenize`` (its pattern and stop words, then PyStemmer on each distinct
    word), written out because bm25s 0.3.16 rebuilds its stop-word set for every text and opens three
    progress bars per call: ~1 ms of a query, which tokenises some sixty candidate sentences.
    tests/test_query.py checks that both give the same tokens.
    """
    stopwords = _stopwords()
    words = [[w for w in _TOKEN.findall(text.lower()) if w not in stopwords] for text in texts]
    distinct = list(dict.fromkeys(w for doc in words for w in doc))
    stems = dict(zip(distinct, _stemmer().stemWords(distinct), strict=True))
    return [[stems[w] for w in doc] for doc in words]


class SparseIndex:
    """BM25 over every chunk, with document frequencies for term weighting."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "bm25"
        self.model: bm25s.BM25 | None = None
        self.keys: list[tuple[str, int]] = []  # (article id, chunk index) per BM25 document
        self.document_frequency: dict[str, int] = {}
        self.generation = -1

    # --- building (at ingest) --------------------------------------------------------------------
    def rebuild(self, articles: dict[str, IndexedArticle], generation: int) -> None:
        """Re-tokenise only what changed since the cached tokens, rebuild the matrix, save it all."""
        import bm25s

        cache = self._read_json("tokens.json", {})
        tokens: dict[str, dict[str, object]] = {}
        changed = [a for a in articles.values() if cache.get(a.id, {}).get("hash") != a.content_hash]
        fresh = tokenize([c.text for a in changed for c in a.iter_chunks()])
        cursor = 0
        for article in changed:
            count = len(article.chunks)
            tokens[article.id] = {"hash": article.content_hash, "chunks": fresh[cursor : cursor + count]}
            cursor += count
        for article in articles.values():
            if article.id not in tokens:
                tokens[article.id] = cache[article.id]
        keys = [(a.id, i) for a in articles.values() for i in range(len(a.chunks))]
        corpus = [doc for a in articles.values() for doc in tokens[a.id]["chunks"]]  # type: ignore[attr-defined]
        frequency = Counter(t for doc in corpus for t in set(doc))
        staging = self.folder.with_name("bm25.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if corpus:
            model = bm25s.BM25()
            model.index(corpus, show_progress=False)
            model.save(str(staging), show_progress=False)
        atomic_write(staging / "tokens.json", json.dumps(tokens))
        atomic_write(
            staging / "keys.json",
            json.dumps({"generation": generation, "keys": keys, "document_frequency": frequency}),
        )
        shutil.rmtree(self.folder, ignore_errors=True)
        staging.rename(self.folder)
        self.model = None
        self.generation = -1

    # --- reading (at query time) -----------------------------------------------------------------
    def load(self, generation: int) -> bool:
        """Memory-map the saved index; False when it is missing or older than the manifest."""
        import bm25s

        if self.generation == generation:
            return True
        meta = self._read_json("keys.json", {})
        if meta.get("generation") != generation:
            return False
        self.keys = [(a, int(i)) for a, i in meta["keys"]]
        self.document_frequency = meta["document_frequency"]
        self.model = (
            bm25s.BM25.load(str(self.folder), mmap=True, show_progress=False, verbosity=0)
            if self.keys
            else None
        )
        self.generation = generation
        return True

    def search(self, query: str, k: int) -> list[tuple[tuple[str, int], float]]:
        tokens = tokenize([query])
        if self.model is None or not tokens[0]:
            return []
        known = [[t for t in tokens[0] if t in self.model.vocab_dict]]
        if not known[0]:
            return []
        # n_threads=0 scores inline; any other value starts a thread pool for each call (bm25s 0.3.16).
        ids, scores = self.model.retrieve(known, k=min(k, len(self.keys)), show_progress=False, n_threads=0)
        return [(self.keys[int(i)], float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def idf(self, term: str) -> float:
        """Inverse document frequency over chunks; a term no chunk contains weighs the most."""
        total = len(self.keys)
        return math.log((total + 1) / (self.document_frequency.get(term, 0) + 0.5))

    def _read_json(self, name: str, default: dict[str, object]) -> dict:  # type: ignore[type-arg]
        path = self.folder / name
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default
        except ValueError:
            return default
