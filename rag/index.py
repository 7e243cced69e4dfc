"""Stage 3: the persistent index: a Chroma collection of chunk vectors, sentence vectors, a JSON manifest.

The manifest holds each article's canonical text, metadata, content hash, chunk spans and sentence
spans. Chroma holds one vector per chunk (what retrieval searches) under a deterministic id
(``article:hash:n``); a file per article version holds the same chunk vectors and one vector per
sentence, pooled from the same model pass (what the answer step ranks candidate sentences by). Syncing is
a set difference between what the manifest implies and what is stored, so an interrupted ingest is
completed, not duplicated, by the next one, and running an ingest twice changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from rag import offline  # noqa: F401
from rag.article_vectors import ArticleVectors
from rag.errors import IndexBusyError, IndexMismatchError, RagIndexError
from rag.settings import Settings
from rag.types import Chunk, IndexedArticle

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Where

    from rag.embeddings import Embedder, Spans

log = logging.getLogger(__name__)

# 3: sentence vectors moved from a Chroma collection to files; 4: sentence vectors pooled from the chunk
# pass, and chunk vectors beside them in the same file (rag/article_vectors.py)
MANIFEST_FORMAT = 4
_MANIFEST = "manifest.json"
_IN_PROGRESS = "ingest-in-progress.json"
_LOCK = "ingest.lock"
# Chunks embedded per group at ingest: many batches of work per call, a few MB of vectors in memory.
_CHUNK_GROUP = 1024


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
    generation: int = 0  # bumped by every sync; side indexes record the generation they match
    signature: dict[str, Any]
    articles: dict[str, IndexedArticle] = {}

    @cached_property
    def chunk_count(self) -> int:
        """Counted once per manifest (a sync writes a new one): every dense search asks for it."""
        return sum(len(a.chunks) for a in self.articles.values())


def chunk_ids(article: IndexedArticle) -> list[str]:
    return [chunk_id(article.id, article.content_hash, i) for i in range(len(article.chunks))]


def chunk_id(article_id: str, content_hash: str, index: int) -> str:
    return f"{article_id}:{content_hash[:12]}:{index}"


def parse_chunk_id(value: str) -> tuple[str, int]:
    article_id, _, index = value.rsplit(":", 2)
    return article_id, int(index)


class ArticleIndex:
    """Chroma + manifest, kept consistent with each other."""

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.root = Path(settings.index_dir)
        self._client: ClientAPI | None = None
        self._collections: dict[str, Collection] = {}
        # chromadb's client set-up is not thread-safe: concurrent first queries from the web app
        # failed with "Could not connect to tenant default_tenant" (chromadb 1.5.9). One opener at a time.
        self._open_lock = threading.RLock()
        self._manifest: Manifest | None = None
        self._manifest_read = False
        self.vectors = ArticleVectors(self.root / "vectors")

    # --- opening ---------------------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest | None:
        """Read on first use, so that a damaged index can still be opened to be rebuilt."""
        if not self._manifest_read:
            self._manifest = self._read_manifest()
            self._manifest_read = True
        return self._manifest

    @manifest.setter
    def manifest(self, value: Manifest | None) -> None:
        self._manifest, self._manifest_read = value, True

    @property
    def exists(self) -> bool:
        return (self.root / _MANIFEST).exists()

    @property
    def interrupted(self) -> list[str] | None:
        """Paths of an ingest that did not finish (the process died), or None."""
        marker = self.root / _IN_PROGRESS
        if not marker.exists():
            return None
        try:
            return list(json.loads(marker.read_text(encoding="utf-8"))["paths"])
        except (ValueError, KeyError, OSError):
            return []

    def expected_signature(self) -> dict[str, Any]:
        return self.settings.index_signature(self.embedder.dimension)

    def check_compatible(self) -> None:
        """Fail loudly, with the fix, when the index was built with other settings than these."""
        if self.manifest is None:
            return
        expected = self.expected_signature()
        stored = self.manifest.signature
        diffs = [
            f"{k}: index has {stored.get(k)!r}, settings say {v!r}"
            for k, v in expected.items()
            if stored.get(k) != v
        ]
        if diffs:
            raise IndexMismatchError(
                f"The index in {self.root} was built with other settings ({'; '.join(diffs)}). "
                "Rebuild it with `rag ingest --rebuild` (or delete the folder), or restore the old settings."
            )

    @property
    def collection(self) -> Collection:
        """Chunk vectors: what retrieval searches."""
        return self._open(self.settings.collection)

    @property
    def client(self) -> ClientAPI:
        with self._open_lock:
            return self._client_locked()

    def _client_locked(self) -> ClientAPI:
        if self._client is None:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            chroma_settings = ChromaSettings(anonymized_telemetry=False)
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if self.settings.chroma_url:
                    url = urlparse(self.settings.chroma_url)
                    self._client = chromadb.HttpClient(
                        host=url.hostname or "127.0.0.1",
                        port=url.port or (443 if url.scheme == "https" else 8000),
                        ssl=url.scheme == "https",
                        settings=chroma_settings,
                    )
                else:
                    self._client = chromadb.PersistentClient(
                        path=str(self.root / "chroma"), settings=chroma_settings
                    )
            except Exception as exc:
                if self.settings.chroma_url:
                    raise RagIndexError(
                        f"Cannot reach the Chroma server at {self.settings.chroma_url} ({exc}). Start it "
                        "(`make chroma`) or unset RAG_CHROMA_URL to use the embedded database."
                    ) from exc
                if not os.access(self.root, os.W_OK) or "readonly" in str(exc).replace("-", ""):
                    raise RagIndexError(
                        f"The index folder {self.root} is read-only, and Chroma needs to write even to "
                        "read it. Make it writable, or copy it to a writable folder and point "
                        "RAG_INDEX_DIR there."
                    ) from exc
                raise RagIndexError(
                    f"Cannot open the index in {self.root} ({exc.__class__.__name__}: {exc}). If the "
                    "folder is damaged or belongs to something else, rebuild with `rag ingest --rebuild` "
                    "or point RAG_INDEX_DIR at another folder."
                ) from exc
        return self._client

    def _open(self, name: str) -> Collection:
        with self._open_lock:
            if name not in self._collections:
                self._collections[name] = self._open_collection(name)
            return self._collections[name]

    def _open_collection(self, name: str) -> Collection:
        signature = self.expected_signature()
        collection = self.client.get_or_create_collection(
            name,
            embedding_function=None,  # never let Chroma pick (and download) a default model
            configuration={"hnsw": {"space": "cosine"}},
            metadata={k: v for k, v in signature.items()},
        )
        stored = {k: (collection.metadata or {}).get(k) for k in signature}
        if stored != signature:
            raise IndexMismatchError(
                f"The Chroma collection '{name}' in {self.root} was built with "
                f"{stored}, but settings say {signature}. Rebuild with `rag ingest --rebuild`."
            )
        return collection

    # --- reading ---------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.manifest.generation if self.manifest else 0

    @property
    def articles(self) -> dict[str, IndexedArticle]:
        return self.manifest.articles if self.manifest else {}

    def chunk_count(self) -> int:
        return self.manifest.chunk_count if self.manifest else 0

    def dense_search(self, query_vector: np.ndarray, k: int) -> list[tuple[Chunk, float]]:
        """Nearest chunks by cosine similarity, best first."""
        total = self.chunk_count()
        if total == 0:
            return []
        result = self.collection.query(
            query_embeddings=query_vector.astype(np.float32).reshape(1, -1),
            n_results=min(k, total),
            include=["distances"],
        )
        hits: list[tuple[Chunk, float]] = []
        for raw_id, distance in zip(result["ids"][0], (result["distances"] or [[]])[0], strict=True):
            article_id, index = parse_chunk_id(raw_id)
            article = self.articles.get(article_id)
            if article is not None and index < len(article.chunks):
                hits.append((article.chunk(index), 1.0 - float(distance)))
        return hits

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
        for article_id, article_rows in rows.items():
            out[article_rows] = read(self.articles[article_id], [keys[r][1] for r in article_rows])
        return out

    def is_consistent(self) -> bool:
        """Chroma holds exactly the vectors the manifest implies (cheap: ids only)."""
        chunks = {cid for a in self.articles.values() for cid in chunk_ids(a)}
        vector_files = {self.vectors.path(a) for a in self.articles.values()}
        return set(self.collection.get(include=[])["ids"]) == chunks and self.vectors.files() == vector_files

    # --- writing ---------------------------------------------------------------------------------------
    @contextmanager
    def writing(self, paths: Iterable[str]) -> Iterator[None]:
        """Exclusive write access, with a marker that survives a crash until the write completes."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.root / _LOCK, "w")  # noqa: SIM115  (closed by the with below)
        except OSError as exc:
            raise RagIndexError(
                f"Cannot write to the index folder {self.root} ({exc.strerror}). Check its permissions "
                "and free space, or set RAG_INDEX_DIR to a writable folder."
            ) from exc
        with lock_file as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise IndexBusyError(
                    f"Another ingest is writing to {self.root}; try again when it has finished."
                ) from exc
            marker = self.root / _IN_PROGRESS
            try:
                atomic_write(marker, json.dumps({"paths": sorted(set(paths))}))
            except OSError as exc:
                raise RagIndexError(f"Cannot write to the index folder {self.root}: {exc}.") from exc
            yield
            marker.unlink(missing_ok=True)

    def sync(
        self, articles: dict[str, IndexedArticle], *, only: set[str] | None = None, progress: bool = False
    ) -> tuple[int, int]:
        """Make Chroma, the article vector files and the manifest hold exactly ``articles``.

        ``only`` limits the comparison with Chroma to those article ids (what an ordinary ingest
        changed), so re-indexing one article in a large archive does not list every vector; without it
        every id is compared, which is how an interrupted ingest is completed. Returns how many chunks
        were added to Chroma and how many sentence vectors were written.
        """
        from chromadb.errors import ChromaError  # Chroma is opened below anyway

        scope = articles.values() if only is None else [a for a in articles.values() if a.id in only]
        wanted = {cid for a in scope for cid in chunk_ids(a)}
        try:
            existing, stale = self._stored_chunk_ids(wanted, only)
            self._delete_chunks(stale)
            stale_files = self.vectors.remove_stale(scope, only)
            todo = [a for a in scope if not self.vectors.has(a) or not existing.issuperset(chunk_ids(a))]
            added = self._embed_articles(todo, existing, progress)
            unchanged = (
                added == (0, 0)
                and not stale
                and not stale_files
                and self.manifest is not None
                and {k: (a.content_hash, a.stamp) for k, a in self.manifest.articles.items()}
                == {k: (a.content_hash, a.stamp) for k, a in articles.items()}
            )
            if not unchanged:
                manifest = Manifest(
                    signature=self.expected_signature(), articles=articles, generation=self.generation + 1
                )
                atomic_write(self.root / _MANIFEST, manifest.model_dump_json())
                self.manifest = manifest
        except (OSError, sqlite3.Error, ChromaError) as exc:  # disk full, read-only folder, broken database
            raise RagIndexError(
                f"Writing the index in {self.root} failed ({exc.__class__.__name__}: {exc}). Nothing "
                "already indexed was lost. Free disk space or fix the folder's permissions, then run "
                "`rag ingest` again: it completes the interrupted ingest."
            ) from exc
        return added

    def _stored_chunk_ids(self, wanted: set[str], only: set[str] | None) -> tuple[set[str], list[str]]:
        """The chunk ids Chroma holds (those of ``only``'s articles, if given), and the unwanted ones."""
        if only is None:
            existing = set(self.collection.get(include=[])["ids"])
        elif only:
            wanted_ids: list[str | int | float | bool] = list(sorted(only))
            article_filter: Where = {"article_id": {"$in": wanted_ids}}  # type: ignore[dict-item]
            existing = set(self.collection.get(where=article_filter, include=[])["ids"])
        else:
            existing = set()
        return existing & wanted, sorted(existing - wanted)

    def _delete_chunks(self, ids: list[str]) -> None:
        batch = self.client.get_max_batch_size()
        for start in range(0, len(ids), batch):
            self.collection.delete(ids=ids[start : start + batch])

    def _embed_articles(
        self, articles: list[IndexedArticle], stored: set[str], progress: bool
    ) -> tuple[int, int]:
        """One model pass over the chunks of ``articles``: chunk vectors go to Chroma (those it lacks),
        and each sentence's vector is pooled from the token states of the chunks that hold it whole.

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
        rows: list[tuple[str, IndexedArticle, int, int]] = []  # (id, article, chunk index, row in vectors)
        row = 0
        for article in articles:
            for index, cid in enumerate(chunk_ids(article)):
                if cid not in stored:
                    rows.append((cid, article, index, row))
                row += 1
        batch = self.client.get_max_batch_size()
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            spans = [article.chunks[index] for _, article, index, _ in part]
            self.collection.add(
                ids=[cid for cid, *_ in part],
                embeddings=vectors[[row for *_, row in part]],
                documents=[article.text[s:e] for (_, article, _, _), (s, e) in zip(part, spans, strict=True)],
                metadatas=[
                    {"article_id": article.id, "index": index, "start": s, "end": e}
                    for (_, article, index, _), (s, e) in zip(part, spans, strict=True)
                ],
            )
        return len(rows)

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
        names = {self.settings.collection, f"{self.settings.collection}-sentences"}
        for existing in self.client.list_collections():
            if existing.name in names:
                self.client.delete_collection(existing.name)
        self._collections.clear()
        self.manifest = None
        (self.root / _MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self.root / "bm25", ignore_errors=True)
        self.vectors.wipe()
        shutil.rmtree(self.root / "sentences", ignore_errors=True)  # format 3 kept sentence vectors there

    def _read_manifest(self) -> Manifest | None:
        path = self.root / _MANIFEST
        if not path.exists():
            return None
        try:
            manifest = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RagIndexError(
                f"The index manifest {path} is unreadable ({exc.__class__.__name__}). "
                "Rebuild the index with `rag ingest --rebuild`."
            ) from exc
        if manifest.format != MANIFEST_FORMAT:
            raise IndexMismatchError(
                f"The index in {self.root} has format {manifest.format}; this version reads "
                f"{MANIFEST_FORMAT}. Rebuild it with `rag ingest --rebuild`."
            )
        return manifest


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


def atomic_write(path: Path, text: str) -> None:
    """Write-then-rename, so a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
