"""Stage 3d: the BM25 side index: in the index folder, updated by each ingest by what changed, never
rebuilt by a query.

bm25s precomputes every (term, chunk) score, and a score depends on the collection's document
frequencies and average length, so any change rebuilt its whole matrix: O(archive) per ingest (0.85 s
of a 1.4 s re-ingest at 3,000 articles). Here the index keeps what does not change, each chunk's term
frequencies and length, in segments, and scores at query time from collection statistics that an
ingest adjusts by the articles it adds and removes. An ingest writes one new segment for its new and
changed articles and marks the old versions dead; when segments pile up, the small ones are merged.
The scores are those of bm25s (Lucene's variant, k1 = 1.5, b = 0.75): tests/test_index.py compares
them. A query reads the segments memory-mapped and scores only the chunks that hold a query term.

The state is saved once per generation of the article store (``state-<generation>.json``), before the
ingest commits. The previous generation's state and its segments are kept until the next ingest, so a
process that has not yet caught up with the commit still reads a whole, consistent index.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.atomic import atomic_write
from rag.types import IndexedArticle

if TYPE_CHECKING:
    from rag.article_store import CatalogEntry

log = logging.getLogger(__name__)

# Words that shape a question but never carry its topic, on top of bm25s' English stop words.
_QUESTION_WORDS = "say said says tell told get got let kind sort many much whether according".split()


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


# bm25s' default token pattern (scikit-learn's): words of two or more word characters.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


# bm25s' English stop words (``bm25s.stopwords.STOPWORDS_EN_PLUS``, 0.3.16; NLTK's list), written out:
# importing them loads bm25s and with it scipy.sparse, 0.23 s of a process's first query.
# tests/test_index.py checks that they are still bm25s' own.
_BM25S_STOPWORDS = """
a about above after again against ain all am an and any are aren aren't as at be because been before
being below between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing
don don't down during each few for from further had hadn hadn't has hasn hasn't have haven haven't
having he her here hers herself him himself his how i if in into is isn isn't it it's its itself
just ll m ma me mightn mightn't more most mustn mustn't my myself needn needn't no nor not now o of
off on once only or other our ours ourselves out over own re s same shan shan't she she's should
should've shouldn shouldn't so some such t than that that'll the their theirs them themselves then
there these they this those through to too under until up ve very was wasn wasn't we were weren
weren't what when where which while who whom why will with won won't wouldn wouldn't y you you'd
you'll you're you've your yours yourself yourselves
""".split()


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    return frozenset(_BM25S_STOPWORDS) | frozenset(_QUESTION_WORDS)


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


_K1 = 1.5
_B = 0.75
# Merge the smaller segments into one when there are more than this many (each query visits them all).
_MAX_SEGMENTS = 8
_STATE = "state-{:010d}.json"
_STATE_GLOB = "state-*.json"
# States kept: the one just committed and the one before it, for processes that have not caught up yet.
_STATES_KEPT = 2


@dataclass
class Segment:
    """Term frequencies of some chunks, by term (compressed sparse columns), with their lengths."""

    name: str
    keys: list[tuple[str, int]]  # (article id, chunk index) per row
    columns: dict[str, int]  # term -> column
    indptr: np.ndarray  # rows of column j: rows[indptr[j] : indptr[j + 1]]
    rows: np.ndarray
    counts: np.ndarray
    lengths: np.ndarray
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @classmethod
    def write(cls, folder: Path, keys: list[tuple[str, int]], docs: list[Counter[str]]) -> None:
        """Write under a temporary name and rename, so a crash never leaves half a segment."""
        terms = sorted({t for doc in docs for t in doc})
        column = {t: j for j, t in enumerate(terms)}
        cols = np.array([column[t] for doc in docs for t in doc], dtype=np.int64)
        rows = np.repeat(np.arange(len(docs), dtype=np.int32), [len(doc) for doc in docs])
        counts = np.array([n for doc in docs for n in doc.values()], dtype=np.float32)
        order = np.argsort(cols, kind="stable")  # by term, then by row
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        np.save(staging / "indptr.npy", np.searchsorted(cols[order], np.arange(len(terms) + 1)))
        np.save(staging / "rows.npy", rows[order])
        np.save(staging / "counts.npy", counts[order])
        np.save(staging / "lengths.npy", np.array([sum(doc.values()) for doc in docs], dtype=np.float32))
        (staging / "terms.json").write_text(json.dumps({"terms": terms, "keys": keys}), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)  # written before a crash, never recorded in the state
        staging.rename(folder)

    @classmethod
    def read(cls, folder: Path) -> Segment:
        meta = json.loads((folder / "terms.json").read_text(encoding="utf-8"))
        return cls(
            name=folder.name,
            keys=[(a, int(i)) for a, i in meta["keys"]],
            columns={t: j for j, t in enumerate(meta["terms"])},
            **{
                name: np.load(folder / f"{name}.npy", mmap_mode="r")
                for name in ("indptr", "rows", "counts", "lengths")
            },
        )

    def docs(self, rows: range) -> list[Counter[str]]:
        """The term counts of some rows (to update statistics and to merge; at ingest only)."""
        found = np.flatnonzero((self.rows >= rows.start) & (self.rows < rows.stop))
        columns = np.searchsorted(self.indptr, found, side="right") - 1
        terms = list(self.columns)
        out = [Counter[str]() for _ in rows]
        for posting, j in zip(found, columns, strict=True):
            out[int(self.rows[posting]) - rows.start][terms[j]] = int(self.counts[posting])
        return out


@dataclass
class State:
    """What the segments add up to: which rows are each article's current version, and the
    collection statistics BM25 needs, kept up to date by each ingest."""

    generation: int = -1
    next_segment: int = 0
    segments: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> hash, segment, row, rows
    frequency: dict[str, int] = field(default_factory=dict)  # chunks holding each term
    docs: int = 0
    length: float = 0.0

    def add(self, article: CatalogEntry, segment: str, row: int, docs: list[Counter[str]]) -> None:
        self.live[article.id] = {
            "hash": article.content_hash,
            "segment": segment,
            "row": row,
            "rows": len(docs),
        }
        self._count(docs, +1)

    def remove(self, article_id: str, docs: list[Counter[str]]) -> None:
        del self.live[article_id]
        self._count(docs, -1)

    def _count(self, docs: list[Counter[str]], sign: int) -> None:
        for doc in docs:
            for term in doc:
                self.frequency[term] = self.frequency.get(term, 0) + sign
                if not self.frequency[term]:
                    del self.frequency[term]
            self.docs += sign
            self.length += sign * sum(doc.values())


class SparseIndex:
    """BM25 over every chunk, in segments that an ingest adds to instead of rebuilding."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "bm25"
        self.state = State()
        self.segments: list[Segment] = []
        self.generation = -1
        # Segments never change once written, so each is read once per process, however many
        # generations use it: catching up with a one-article ingest reads only that ingest's segment.
        self._opened: dict[str, Segment] = {}
        # The segments of each state this process wrote or loaded: cleaning up after an ingest need not
        # parse two 4.6 MB state files (30,000 articles) to learn them.
        self._segments_by_generation: dict[int, list[str]] = {}

    def _segment(self, name: str) -> Segment:
        if name not in self._opened:
            self._opened[name] = Segment.read(self.folder / name)
        return self._opened[name]

    def _install(self, state: State, generation: int) -> None:
        """Make ``state`` the one searched: its segments, each with the rows it holds alive."""
        segments = [dataclasses.replace(self._segment(name)) for name in state.segments]
        by_name = {s.name: s for s in segments}
        for segment in segments:
            segment.alive = np.zeros(len(segment.keys), dtype=bool)
        for entry in state.live.values():
            by_name[entry["segment"]].alive[entry["row"] : entry["row"] + entry["rows"]] = True
        self._opened = {name: self._opened[name] for name in state.segments}
        self._segments_by_generation[generation] = list(state.segments)
        self.state, self.segments, self.generation = state, segments, generation

    # --- updating (at ingest) --------------------------------------------------------------------
    def update(
        self,
        catalog: Mapping[str, CatalogEntry],
        fetch: Callable[[list[str]], dict[str, IndexedArticle]],
        generation: int,
    ) -> None:
        """Make the index hold exactly the articles of ``catalog``: tokenise new and changed ones (read
        with ``fetch``), retire the versions they replace and the deleted ones, merge small segments,
        then save the state as ``generation``'s.

        A missing or damaged index (or one from an older version) is built afresh.
        """
        try:
            self._update(catalog, fetch, generation, self._newest_state())
        except (OSError, ValueError, KeyError) as exc:
            log.warning("Rebuilding the BM25 index in %s (%s: %s)", self.folder, type(exc).__name__, exc)
            self._update(catalog, fetch, generation, None)

    def _update(
        self,
        catalog: Mapping[str, CatalogEntry],
        fetch: Callable[[list[str]], dict[str, IndexedArticle]],
        generation: int,
        state: State | None,
    ) -> None:
        if state is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._opened.clear()
            state = State()
        self.folder.mkdir(parents=True, exist_ok=True)
        # Each is opened: a missing or unreadable segment raises here, and the index is rebuilt.
        segments = {name: self._segment(name) for name in state.segments}
        stale = [a for a, e in state.live.items() if a not in catalog or catalog[a].content_hash != e["hash"]]
        for article_id in stale:
            self._retire(state, segments, article_id)
        fresh_ids = [a for a in catalog if a not in state.live]
        if fresh_ids:
            loaded = fetch(fresh_ids)
            fresh = [loaded[a] for a in fresh_ids]
            docs = [Counter(tokens) for tokens in tokenize([c.text for a in fresh for c in a.iter_chunks()])]
            self._add_segment(state, [catalog[a] for a in fresh_ids], docs, segments)
        self._merge_small_segments(state, catalog, segments)
        in_use = {entry["segment"] for entry in state.live.values()}
        state.segments = [name for name in state.segments if name in in_use]
        state.generation = generation
        atomic_write(self.folder / _STATE.format(generation), json.dumps(vars(state)))
        self._install(state, generation)

    def forget_older_than(self, generation: int) -> None:
        """Delete the states before the previous generation's, and every segment no kept state uses
        (replaced ones, and any a crash left half-written)."""
        if not self.folder.exists():
            return
        states = sorted(self.folder.glob(_STATE_GLOB))
        kept = [p for p in states if _generation_of(p) <= generation][-_STATES_KEPT:]
        for path in states:
            if path not in kept and _generation_of(path) < generation:
                path.unlink(missing_ok=True)
        in_use = {name for p in self.folder.glob(_STATE_GLOB) for name in self._segments_of(p)}
        for path in self.folder.iterdir():
            if path.is_dir() and path.name not in in_use:
                shutil.rmtree(path, ignore_errors=True)

    def _segments_of(self, path: Path) -> list[str]:
        known = self._segments_by_generation.get(_generation_of(path))
        if known is not None:
            return known
        try:
            return list(json.loads(path.read_text(encoding="utf-8"))["segments"])
        except (OSError, ValueError, KeyError):
            return []

    def _newest_state(self) -> State | None:
        """The newest saved state, to update: a copy of the one in memory when that is it (parsing the
        file took 0.16 s at 30,000 articles), so that queries reading the installed one never see it
        half-changed."""
        newest = self._newest_generation()
        if newest != self.generation or newest < 0:
            return self._read_state(newest)
        state = self.state
        return dataclasses.replace(
            state,
            segments=list(state.segments),
            live={a: dict(e) for a, e in state.live.items()},
            frequency=dict(state.frequency),
        )

    def wipe(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.state, self.segments, self.generation = State(), [], -1
        self._opened.clear()
        self._segments_by_generation.clear()

    def live_hashes(self, generation: int) -> dict[str, str] | None:
        """Article id -> content hash of what ``generation``'s state indexes (None: no such state)."""
        state = self._read_state(generation)
        return None if state is None else {a: e["hash"] for a, e in state.live.items()}

    def _add_segment(
        self,
        state: State,
        articles: list[CatalogEntry],
        docs: list[Counter[str]],
        segments: dict[str, Segment],
    ) -> None:
        name = f"segment-{state.next_segment:06d}"
        state.next_segment += 1
        keys = [(a.id, i) for a in articles for i in range(a.chunks)]
        Segment.write(self.folder / name, keys, docs)
        segments[name] = self._segment(name)
        state.segments.append(name)
        row = 0
        for article in articles:
            state.add(article, name, row, docs[row : row + article.chunks])
            row += article.chunks

    @staticmethod
    def _retire(state: State, segments: dict[str, Segment], article_id: str) -> list[Counter[str]]:
        """Take an article's rows out of the statistics and the live set; returns their term counts."""
        entry = state.live[article_id]
        docs = segments[entry["segment"]].docs(range(entry["row"], entry["row"] + entry["rows"]))
        state.remove(article_id, docs)
        return docs

    def _merge_small_segments(
        self, state: State, articles: Mapping[str, CatalogEntry], segments: dict[str, Segment]
    ) -> None:
        """Past ``_MAX_SEGMENTS``, every segment but the largest becomes one; the largest joins them when
        most of its rows are dead. Each chunk is rewritten only when its segment is merged, so the
        work is spread over ingests rather than paid in full by each."""
        live_rows = Counter[str]()
        for entry in state.live.values():
            live_rows[entry["segment"]] += entry["rows"]
        active = [name for name in state.segments if live_rows[name]]
        if len(active) <= _MAX_SEGMENTS:
            return
        largest = max(active, key=lambda name: live_rows[name])
        if live_rows[largest] > len(segments[largest].keys) / 2:
            active.remove(largest)
        moving = [a for a, e in state.live.items() if e["segment"] in active]
        docs = [doc for article_id in moving for doc in self._retire(state, segments, article_id)]
        self._add_segment(state, [articles[a] for a in moving], docs, segments)

    # --- reading (at query time) -----------------------------------------------------------------
    def load(self, generation: int) -> bool:
        """Open the state saved for ``generation``; False when there is none (or it is damaged)."""
        if self.generation == generation:
            return True
        state = self._read_state(generation)
        if state is None:
            return False
        try:
            self._install(state, generation)
        except (OSError, ValueError, KeyError):
            return False  # damaged: the next ingest rebuilds it
        return True

    def search(self, query: str, k: int) -> list[tuple[tuple[str, int], float]]:
        """The ``k`` best chunks by BM25, each query word counted as often as it occurs (as bm25s does)."""
        terms = [t for t in tokenize([query])[0] if t in self.state.frequency]
        if not terms or not self.state.docs:
            return []
        average = self.state.length / self.state.docs
        hits: list[tuple[float, tuple[str, int]]] = []
        for segment in self.segments:
            if not segment.keys:
                continue
            scores = np.zeros(len(segment.keys), dtype=np.float32)
            for term in terms:
                j = segment.columns.get(term)
                if j is None:
                    continue
                start, end = segment.indptr[j], segment.indptr[j + 1]
                rows, counts = segment.rows[start:end], segment.counts[start:end]
                norm = _K1 * ((1 - _B) + _B * segment.lengths[rows] / average)
                scores[rows] += self._bm25_idf(term) * counts / (norm + counts)
            scores[~segment.alive] = 0
            best = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            hits.extend((float(scores[r]), segment.keys[r]) for r in best if scores[r] > 0)
        hits.sort(key=lambda hit: -hit[0])
        return [(key, score) for score, key in hits[:k]]

    def _bm25_idf(self, term: str) -> float:
        """Lucene's BM25 idf, over live chunks."""
        df = self.state.frequency.get(term, 0)
        return math.log(1 + (self.state.docs - df + 0.5) / (df + 0.5))

    def idf(self, term: str) -> float:
        """Inverse document frequency over chunks; a term no chunk contains weighs the most."""
        return math.log((self.state.docs + 1) / (self.state.frequency.get(term, 0) + 0.5))

    def _newest_generation(self) -> int:
        states = sorted(self.folder.glob(_STATE_GLOB)) if self.folder.exists() else []
        return _generation_of(states[-1]) if states else -1

    def _read_state(self, generation: int) -> State | None:
        path = self.folder / _STATE.format(generation)
        try:
            return State(**json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None
        except (OSError, ValueError, TypeError):
            return None


def _generation_of(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])
