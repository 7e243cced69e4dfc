"""Stage 3: the index, a coordinator of the stores it keeps in step.

- the article store (``article_store.py``): canonical text, metadata, spans and the generation: the truth;
- the dense index (``dense.py``): one Chroma vector per chunk, for nearest-neighbour search;
- the vector files (``article_vectors.py``): each article version's chunk and sentence vectors;
- BM25 (``sparse.py``): term statistics per chunk.

One writer at a time (a lock file in the index folder; against a Chroma server also a lease on the
server) writes the derived stores first, then commits the articles in one transaction that bumps the
generation, then deletes what the commit made stale. Readers take no lock: each query starts by
comparing the store's generation with the one it last saw, and catches up (drops the articles that
changed from its cache, reopens Chroma, loads BM25's state for that generation). A query that still finds
a file deleted under it by a later commit is retried once on the newer state.

A marker file records an ingest in progress; if its writer died (the lock is free), the next use
completes the ingest by comparing every store with the article store, so every article ends up indexed
exactly once, with no orphans.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from rag.article_store import (
    ArticleStore,
    CatalogEntry,
    ChromaArticleStore,
    SqliteArticleStore,
    StoreState,
    check_format,
)
from rag.article_vectors import ArticleVectors
from rag.atomic import atomic_write
from rag.dense import DenseIndex, chunk_id, parse_chunk_id
from rag.errors import IndexBusyError, IndexChangedError, IndexMismatchError, RagIndexError
from rag.settings import Settings
from rag.sparse import SparseIndex
from rag.types import Chunk, IndexedArticle

if TYPE_CHECKING:
    from rag.embeddings import Embedder, Spans

log = logging.getLogger(__name__)

_IN_PROGRESS = "ingest-in-progress.json"
_LOCK = "ingest.lock"
_OLD_MANIFEST = "manifest.json"  # format 4 and before kept every article in one JSON file
# Chunks embedded per group at ingest: many batches of work per call, a few MB of vectors in memory.
_CHUNK_GROUP = 1024


def chunk_ids(article: IndexedArticle | CatalogEntry) -> list[str]:
    count = len(article.chunks) if isinstance(article, IndexedArticle) else article.chunks
    return [chunk_id(article.id, article.content_hash, i) for i in range(count)]


class ArticleView(Mapping[str, IndexedArticle]):
    """The committed articles, read from the store by id when first needed and kept in a small cache.

    Start-up reads none of them, and a query reads the few it retrieved; iterating reads them all (the
    Library tab and tests do that, queries never).
    """

    def __init__(self, index: ArticleIndex, size: int) -> None:
        self._index = index
        self._size = size
        self._cache: OrderedDict[str, IndexedArticle] = OrderedDict()
        self._lock = threading.Lock()

    def fetch(self, ids: Iterable[str]) -> dict[str, IndexedArticle]:
        """The articles among ``ids`` that exist, reading the uncached ones in one go."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            found = {i: self._cache[i] for i in wanted if i in self._cache}
            for i in found:
                self._cache.move_to_end(i)
        missing = [i for i in wanted if i not in found]
        if missing:
            loaded = self._index.store.get(missing)
            found.update(loaded)
            with self._lock:
                self._cache.update(loaded)
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return found

    def forget(self, ids: Iterable[str] | None = None) -> None:
        with self._lock:
            if ids is None:
                self._cache.clear()
            for i in ids or ():
                self._cache.pop(i, None)

    def __getitem__(self, article_id: str) -> IndexedArticle:
        found = self.fetch([article_id])
        if article_id not in found:
            raise KeyError(article_id)
        return found[article_id]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._index.catalog()))

    def __len__(self) -> int:
        return len(self._index.catalog())

    def __contains__(self, article_id: object) -> bool:
        return isinstance(article_id, str) and bool(self.fetch([article_id]))


@dataclass
class Plan:
    """What an ingest commits: the new and changed articles, and the ids it removes."""

    upserts: list[IndexedArticle] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    catalog: dict[str, CatalogEntry] = field(default_factory=dict)  # every article after the commit
    previous: dict[str, CatalogEntry] = field(default_factory=dict)  # every article before it


class ArticleIndex:
    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.root = Path(settings.index_dir)
        self.dense = DenseIndex(settings, self.expected_signature)
        self.vectors = ArticleVectors(self.root / "vectors")
        self.sparse = SparseIndex(self.root)
        self.articles = ArticleView(self, settings.article_cache_size)
        self._store: ArticleStore | None = None
        self._generation = -1  # the committed state this process has caught up with
        self._state: StoreState | None = None
        self._checked_at = 0.0
        self._refresh_lock = threading.RLock()
        self._catalog: tuple[int, dict[str, CatalogEntry]] | None = None  # (generation, catalog)

    # --- the stores --------------------------------------------------------------------------------
    def catalog(self) -> dict[str, CatalogEntry]:
        """Every committed article's catalog entry, read again only when the generation moved: reading it
        costs 0.22 s at 30,000 articles, and a running app's next ingest starts from the one its last
        commit wrote (a copy: callers may change it)."""
        generation = self.store.generation()
        cached = self._catalog
        if cached is None or cached[0] != generation:
            catalog = self.store.catalog()
            if self.store.generation() != generation:  # a commit landed while it was read
                return catalog
            self._catalog = cached = (generation, catalog)
        return dict(cached[1])

    @property
    def store(self) -> ArticleStore:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self) -> ArticleStore:
        if self.dense.remote:
            return ChromaArticleStore(
                self.dense.client,
                self.settings.collection,
                lease_s=self.settings.ingest_lease_s,
                wait_s=self.settings.ingest_wait_s,
            )
        return SqliteArticleStore(self.root, busy_timeout_s=self.settings.ingest_wait_s)

    def expected_signature(self) -> dict[str, Any]:
        return self.settings.index_signature(self.embedder.dimension)

    @property
    def exists(self) -> bool:
        return self.store.exists()

    @property
    def generation(self) -> int:
        return max(self._generation, 0)

    def check_compatible(self) -> None:
        """Fail loudly, with the fix, when the index was built by another version or other settings."""
        if (self.root / _OLD_MANIFEST).exists() and not self.store.exists():
            raise IndexMismatchError(
                f"The index in {self.root} has format 4; this version reads 5. Rebuild it with "
                "`rag ingest --rebuild`."
            )
        state = self.store.state()
        check_format(state, self.settings.chroma_url or self.root)
        if state is None:
            return
        expected = self.expected_signature()
        diffs = [
            f"{k}: index has {state.signature.get(k)!r}, settings say {v!r}"
            for k, v in expected.items()
            if state.signature.get(k) != v
        ]
        if diffs:
            raise IndexMismatchError(
                f"The index in {self.root} was built with other settings ({'; '.join(diffs)}). "
                "Rebuild it with `rag ingest --rebuild` (or delete the folder), or restore the old settings."
            )

    # --- catching up with other processes ------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> int:
        """Catch up with whatever any process committed since this one last looked; cheap when nothing
        did (one indexed read of the store; against a server, at most once per refresh interval unless
        ``force``)."""
        now = time.monotonic()
        if not force and self.dense.remote and now - self._checked_at < self.settings.refresh_interval_s:
            return self._generation
        generation = self.store.generation()
        self._checked_at = now
        if generation != self._generation:
            with self._refresh_lock:
                if generation != self._generation:
                    self._catch_up(generation)
        return self._generation

    def _catch_up(self, generation: int) -> None:
        if self._generation < 0:
            self.articles.forget()
        else:
            self.articles.forget(self.store.changed_since(self._generation))
            self.dense.reopen()
        self._state = self.store.state()
        if self.dense.remote and not self._update_local_caches(generation):
            return  # another process here is updating them: catch up again on the next question
        if generation > 0 and not self.sparse.load(generation):
            log.warning(
                "BM25 in %s does not match generation %d; run `rag ingest` to repair it",
                self.root,
                generation,
            )
        self._generation = generation

    def _update_local_caches(self, generation: int) -> bool:
        """Against a server, BM25 and the vector files are this machine's cache of what the server holds:
        bring BM25 up to date now (vector files are made when first read). False if another process
        on this machine holds the index folder's lock."""
        if self.sparse.load(generation):
            return True
        try:
            with self._lock_file(wait_s=0):
                self.sparse.update(self.store.catalog(), self.store.get, generation)
                self.sparse.forget_older_than(generation)
        except IndexBusyError:
            log.info("Another process on this machine is updating the BM25 cache in %s", self.root)
            return False
        return True

    def sparse_ready(self) -> bool:
        return self.sparse.load(self.refresh())

    # --- reading -----------------------------------------------------------------------------------
    def chunk_count(self) -> int:
        """In the state last caught up with (retrieval refreshes before it searches)."""
        return self._state.chunk_count if self._state else 0

    def dense_search(self, query_vector: np.ndarray, k: int) -> list[tuple[Chunk, float]]:
        """Nearest chunks of the committed articles by cosine similarity, best first."""
        total = self.chunk_count()
        if total == 0:
            return []
        found = [
            (parse_chunk_id(i), similarity)
            for i, similarity in self.dense.search(query_vector, min(k, total))
        ]
        articles = self.articles.fetch(article_id for (article_id, _, _), _ in found)
        hits: list[tuple[Chunk, float]] = []
        for (article_id, short_hash, index), similarity in found:
            article = articles.get(article_id)
            # A chunk of a version committed after (or replaced before) the one this process knows.
            if (
                article is not None
                and article.content_hash[:12] == short_hash
                and index < len(article.chunks)
            ):
                hits.append((article.chunk(index), similarity))
        return hits

    def sparse_search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
        ranked = self.sparse.search(query, k)
        articles = self.articles.fetch(article_id for (article_id, _), _ in ranked)
        return [
            (articles[article_id].chunk(index), score)
            for (article_id, index), score in ranked
            if article_id in articles and index < len(articles[article_id].chunks)
        ]

    def idf(self, term: str) -> float:
        return self.sparse.idf(term)

    def chunk_vectors(self, chunks: list[Chunk]) -> np.ndarray:
        """Stored embeddings of the given chunks, in order (no model call)."""
        return self._stored_vectors([(c.article_id, c.index) for c in chunks], self.vectors.chunk_vectors)

    def sentence_vectors(self, sentences: list[tuple[str, int]]) -> np.ndarray:
        """Stored embeddings of (article_id, sentence index) pairs, in order (no model call)."""
        return self._stored_vectors(sentences, self.vectors.sentence_vectors)

    def _stored_vectors(
        self, keys: list[tuple[str, int]], read: Callable[[IndexedArticle, list[int]], np.ndarray]
    ) -> np.ndarray:
        """Rows for (article_id, index) pairs, read one article file at a time."""
        out = np.zeros((len(keys), self.embedder.dimension), dtype=np.float32)
        rows: dict[str, list[int]] = {}
        for row, (article_id, _) in enumerate(keys):
            rows.setdefault(article_id, []).append(row)
        articles = self.articles.fetch(rows)
        for article_id, article_rows in rows.items():
            article = articles.get(article_id)
            if article is None:
                raise IndexChangedError(f"Article '{article_id}' was removed during the query.")
            if self.dense.remote and not self.vectors.has(article):
                self._embed_articles([article], stored=None, progress=False)  # this machine's cache
            try:
                out[article_rows] = read(article, [keys[r][1] for r in article_rows])
            except FileNotFoundError as exc:  # a later commit replaced this version and deleted its file
                raise IndexChangedError(f"Article '{article_id}' changed during the query.") from exc
        return out

    def check(self) -> list[str]:
        """What does not match the article store: missing or orphan chunks, vector files, BM25 rows.
        Empty when the index is consistent (``rag check`` prints it)."""
        catalog = self.store.catalog()
        problems: list[str] = []
        wanted = {cid for entry in catalog.values() for cid in chunk_ids(entry)}
        stored = self.dense.ids()
        if missing := wanted - stored:
            problems.append(f"{len(missing)} chunk(s) missing from Chroma, e.g. {sorted(missing)[0]}")
        if orphans := stored - wanted:
            problems.append(f"{len(orphans)} orphan chunk(s) in Chroma, e.g. {sorted(orphans)[0]}")
        files = {self.vectors.name(e.id, e.content_hash) for e in catalog.values()}
        present = self.vectors.names()
        if not self.dense.remote and (missing_files := files - present):
            problems.append(f"{len(missing_files)} article vector file(s) missing")
        if orphan_files := present - files:
            problems.append(f"{len(orphan_files)} orphan vector file(s)")
        live = self.sparse.live_hashes(self.store.generation())
        if live is None:
            problems.append("BM25 has no state for the current generation")
        elif live != {e.id: e.content_hash for e in catalog.values()}:
            problems.append("BM25 does not hold exactly the current articles")
        return problems

    def is_consistent(self) -> bool:
        return not self.check()

    # --- writing -----------------------------------------------------------------------------------
    @property
    def interrupted(self) -> list[str] | None:
        """Paths of an ingest whose writer died before it finished, or None (also while one runs)."""
        marker = self.root / _IN_PROGRESS
        if not marker.exists() or self.writer_active():
            return None
        try:
            return list(json.loads(marker.read_text(encoding="utf-8"))["paths"])
        except (ValueError, KeyError, OSError):
            return []

    def writer_active(self) -> bool:
        """Whether a live process holds the ingest lock on this index folder."""
        try:
            with self._lock_file(wait_s=0):
                return False
        except IndexBusyError:
            return True
        except RagIndexError:
            return False  # a folder we cannot write to has no writer of ours

    @contextmanager
    def _lock_file(self, wait_s: float, on_wait: Callable[[], None] | None = None) -> Iterator[IO[str]]:
        """The index folder's writer lock, waited for up to ``wait_s`` seconds."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / _LOCK, "a")  # noqa: SIM115  (closed by the with below)
        except OSError as exc:
            raise RagIndexError(
                f"Cannot write to the index folder {self.root} ({exc.strerror}). Check its permissions "
                "and free space, or set RAG_INDEX_DIR to a writable folder."
            ) from exc
        with handle:
            deadline = time.monotonic() + wait_s
            waited = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise IndexBusyError(
                            f"Another ingest is writing to {self.root}; try again when it has finished."
                        ) from None
                    if not waited and on_wait is not None:
                        on_wait()
                    waited = True
                    time.sleep(0.1)
            yield handle

    @contextmanager
    def writing(
        self, paths: Iterable[str], on_wait: Callable[[], None] | None = None, wait_s: float | None = None
    ) -> Iterator[bool]:
        """Exclusive write access (waiting up to ``wait_s``, by default ``ingest_wait_s``, for another
        writer), with a marker that survives a crash until the write completes. Yields whether a dead
        writer's marker was there: its ingest must be completed by comparing every store."""
        wait = self.settings.ingest_wait_s if wait_s is None else wait_s
        with self._lock_file(wait, on_wait), self.store.writer():
            marker = self.root / _IN_PROGRESS
            resumed = marker.exists()
            try:
                atomic_write(marker, json.dumps({"paths": sorted(set(paths))}))
            except OSError as exc:
                raise RagIndexError(f"Cannot write to the index folder {self.root}: {exc}.") from exc
            yield resumed
            marker.unlink(missing_ok=True)

    def sync(self, plan: Plan, *, full: bool, progress: bool = False) -> tuple[int, int]:
        """Make every store hold exactly ``plan.catalog``, then commit. Call inside ``writing``.

        ``full`` compares every article with every store (a first build, or completing an ingest a
        crash interrupted); otherwise only the articles the plan touches are compared, so re-indexing
        one article in a large archive lists no other. Returns (chunks added to Chroma, sentence vectors
        written).
        """
        from chromadb.errors import ChromaError  # Chroma is opened below anyway

        try:
            return self._sync(plan, full, progress)
        except (OSError, sqlite3.Error, ChromaError) as exc:
            raise RagIndexError(
                f"Writing the index in {self.root} failed ({exc.__class__.__name__}: {exc}). Nothing "
                "already indexed was lost. Free disk space or fix the folder's permissions, then run "
                "`rag ingest` again: it completes the interrupted ingest."
            ) from exc

    def _sync(self, plan: Plan, full: bool, progress: bool) -> tuple[int, int]:
        upserted = {a.id: a for a in plan.upserts}
        scope = None if full else set(upserted) | set(plan.removals)
        wanted_entries = [e for e in plan.catalog.values() if scope is None or e.id in scope]
        wanted = {cid for e in wanted_entries for cid in chunk_ids(e)}
        if scope is None:
            existing = self.dense.ids()
        else:  # looked up by id: a filter on article_id scans Chroma's metadata (0.11 s at 3,000 articles)
            before = {cid for i in scope if i in plan.previous for cid in chunk_ids(plan.previous[i])}
            existing = self.dense.present(wanted | before)
        todo_ids = [
            e.id
            for e in wanted_entries
            if not self.vectors.has_version(e.id, e.content_hash) or not existing.issuperset(chunk_ids(e))
        ]
        todo = self._articles_for(todo_ids, upserted)
        added = self._embed_articles(todo, existing & wanted, progress)

        def fetch(ids: list[str]) -> dict[str, IndexedArticle]:
            return {a.id: a for a in self._articles_for(ids, upserted)}

        next_generation = self.store.generation() + 1
        changed = bool(plan.upserts or plan.removals or added != (0, 0) or existing - wanted)
        if changed or not self.sparse.load(self.store.generation()):
            self.sparse.update(plan.catalog, fetch, next_generation)
            generation = self.store.commit(plan.upserts, plan.removals, self.expected_signature())
            if generation != next_generation:  # cannot happen under the lock; a bug if it does
                raise RuntimeError(f"generation {generation} committed, {next_generation} expected")
            self._generation = generation
            self._state = self.store.state()
            self._catalog = (generation, dict(plan.catalog))
            self.articles.forget([*upserted, *plan.removals])
            self.sparse.load(generation)
        # What the commit made stale: old versions' chunks and files, and removed articles'.
        self.dense.delete(existing - wanted)
        self.vectors.remove_stale({self.vectors.name(e.id, e.content_hash) for e in wanted_entries}, scope)
        self.sparse.forget_older_than(self.generation)
        return added

    def _articles_for(self, ids: list[str], upserted: dict[str, IndexedArticle]) -> list[IndexedArticle]:
        known = {**self.store.get([i for i in ids if i not in upserted]), **upserted}
        return [known[i] for i in ids if i in known]

    def _embed_articles(
        self, articles: list[IndexedArticle], stored: set[str] | None, progress: bool
    ) -> tuple[int, int]:
        """One model pass over the chunks of ``articles``: chunk vectors go to Chroma (those it lacks;
        none when ``stored`` is None, as when a machine fills its cache from a server), and each
        sentence's vector is pooled from the token states of the chunks that hold it whole.

        Reading each sentence in its passage costs no second pass over the text (ingest was twice as
        slow with one) and answered the evaluation questions as well as embedding sentences alone.
        Articles go in groups of about ``_CHUNK_GROUP`` chunks, so memory stays flat however large
        the archive. Returns (chunks added, sentences written).
        """
        bar = tqdm(total=sum(len(a.chunks) for a in articles), desc="Embedding", disable=not progress)
        added = written = 0
        for group in _groups(articles, _CHUNK_GROUP):
            texts = [a.text[s:e] for a in group for s, e in a.chunks]
            parts = [sentences_within(a, s, e) for a in group for s, e in a.chunks]
            chunk_vectors, part_vectors = self.embedder.embed_with_parts(texts, [p for p, _ in parts])
            if stored is not None:
                added += self._add_chunks(group, chunk_vectors, stored)
            sentence_vectors = self._sentence_vectors(group, [i for _, i in parts], part_vectors)
            first = 0
            for article, vectors in zip(group, sentence_vectors, strict=True):
                self.vectors.write(article, chunk_vectors[first : first + len(article.chunks)], vectors)
                first += len(article.chunks)
                written += len(vectors)
            bar.update(len(texts))
        bar.close()
        return added, written

    def _add_chunks(self, articles: list[IndexedArticle], vectors: np.ndarray, stored: set[str]) -> int:
        """Add the chunks Chroma lacks; ``vectors`` holds every chunk of ``articles``, in order."""
        ids: list[str] = []
        rows: list[int] = []
        documents: list[str] = []
        metadatas: list[dict[str, Any]] = []
        row = 0
        for article in articles:
            for index, cid in enumerate(chunk_ids(article)):
                if cid not in stored:
                    start, end = article.chunks[index]
                    ids.append(cid)
                    rows.append(row)
                    documents.append(article.text[start:end])
                    metadatas.append({"article_id": article.id, "index": index, "start": start, "end": end})
                row += 1
        self.dense.add(ids, vectors[rows], documents, metadatas)
        return len(ids)

    def _sentence_vectors(
        self, articles: list[IndexedArticle], owners: list[list[int]], pooled: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Per article, the mean of each sentence's in-chunk vectors (a sentence in the overlap is read
        in both chunks); sentences no chunk held whole (a sentence longer than a chunk, or cut by the
        model's length limit) are embedded on their own."""
        dim = self.embedder.dimension
        sums = [np.zeros((len(a.sentences), dim), dtype=np.float32) for a in articles]
        chunk_article = [n for n, a in enumerate(articles) for _ in a.chunks]
        for n, sentence_ids, vectors in zip(chunk_article, owners, pooled, strict=True):
            for sentence, vector in zip(sentence_ids, vectors, strict=True):
                sums[n][sentence] += vector
        alone = [(n, i) for n, rows in enumerate(sums) for i in np.flatnonzero(~rows.any(axis=1))]
        texts = [articles[n].text[slice(*articles[n].sentences[i])] for n, i in alone]
        for (n, i), vector in zip(alone, self.embedder.embed(texts), strict=True):
            sums[n][i] = vector
        return [rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12) for rows in sums]

    def wipe(self) -> None:
        """Delete the whole index (for ``--rebuild``), and what older formats kept elsewhere."""
        self.dense.wipe()
        self.store.wipe()
        self.sparse.wipe()
        self.vectors.wipe()
        (self.root / _OLD_MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self.root / "sentences", ignore_errors=True)  # format 3 kept sentence vectors there
        self.articles.forget()
        self._generation, self._state, self._catalog = -1, None, None


def sentences_within(article: IndexedArticle, start: int, end: int) -> tuple[Spans, list[int]]:
    """The sentences lying wholly inside ``[start, end)``: their spans relative to ``start``, and their
    indices in the article."""
    spans = article.sentences
    inside = [i for i in article.sentences_in(start, end) if spans[i][0] >= start and spans[i][1] <= end]
    return [(spans[i][0] - start, spans[i][1] - start) for i in inside], inside


def _groups(articles: list[IndexedArticle], chunks_per_group: int) -> Iterator[list[IndexedArticle]]:
    group: list[IndexedArticle] = []
    chunks = 0
    for article in articles:
        group.append(article)
        chunks += len(article.chunks)
        if chunks >= chunks_per_group:
            yield group
            group, chunks = [], 0
    if group:
        yield group
