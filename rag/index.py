"""Stage 3: the persistent index: a Chroma collection of chunk vectors, sentence vectors, a JSON manifest.

The manifest holds each article's canonical text, metadata, content hash, chunk spans and sentence
spans. Chroma holds one vector per chunk (what retrieval searches) under a deterministic id
(``article:hash:n``); the sentence store holds one vector per sentence (what the answer step compares
with the question, so a query never re-embeds article text) in a file per article version. Syncing is
a set difference between what the manifest implies and what is stored, so an interrupted ingest is
completed, not duplicated, by the next one, and running an ingest twice changes nothing.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from rag import offline  # noqa: F401
from rag.sentence_store import SentenceStore
from rag.settings import Settings
from rag.types import Article, Chunk

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Where

    from rag.embeddings import Embedder

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 3  # 3: sentence vectors moved from a Chroma collection to the sentence store
_MANIFEST = "manifest.json"
_IN_PROGRESS = "ingest-in-progress.json"
_LOCK = "ingest.lock"
# Sentences embedded per model call group at ingest: ~6 MB of vectors, many batches of work.
_SENTENCE_GROUP = 4096


class RagIndexError(RuntimeError):
    """Base class for index problems a user must act on."""


class IndexMismatchError(RagIndexError):
    """The index was built with another embedding model or chunking; mixing them gives wrong answers."""


class IndexBusyError(RagIndexError):
    """Another ingest holds the index."""


class IndexedArticle(Article):
    chunks: list[tuple[int, int]]
    sentences: list[tuple[int, int]]

    def chunk(self, index: int) -> Chunk:
        start, end = self.chunks[index]
        return Chunk(article_id=self.id, index=index, start=start, end=end, text=self.text[start:end])

    def iter_chunks(self) -> Iterator[Chunk]:
        return (self.chunk(i) for i in range(len(self.chunks)))

    def chunk_ids(self) -> list[str]:
        return [chunk_id(self.id, self.content_hash, i) for i in range(len(self.chunks))]

    def sentences_in(self, start: int, end: int) -> list[int]:
        """Indices of the sentences overlapping ``[start, end)``, in text order."""
        first = bisect.bisect_right([e for _, e in self.sentences], start)
        found = []
        for i in range(first, len(self.sentences)):
            if self.sentences[i][0] >= end:
                break
            found.append(i)
        return found


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
    generation: int = 0  # bumped by every sync; side indexes record the generation they match
    signature: dict[str, Any]
    articles: dict[str, IndexedArticle] = {}


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
        self.sentences = SentenceStore(self.root / "sentences")

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
        return sum(len(a.chunks) for a in self.articles.values())

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
        ids = [chunk_id(c.article_id, self.articles[c.article_id].content_hash, c.index) for c in chunks]
        return self._vectors(self.collection, ids)

    def sentence_vectors(self, sentences: list[tuple[str, int]]) -> np.ndarray:
        """Stored embeddings of (article_id, sentence index) pairs, in order (no model call)."""
        out = np.zeros((len(sentences), self.embedder.dimension), dtype=np.float32)
        rows: dict[str, list[int]] = {}
        for row, (article_id, _) in enumerate(sentences):
            rows.setdefault(article_id, []).append(row)
        for article_id, article_rows in rows.items():
            indices = [sentences[r][1] for r in article_rows]
            out[article_rows] = self.sentences.vectors(self.articles[article_id], indices)
        return out

    def _vectors(self, collection: Collection, ids: list[str]) -> np.ndarray:
        dim = self.embedder.dimension
        if not ids:
            return np.zeros((0, dim), dtype=np.float32)
        result = collection.get(ids=ids, include=["embeddings"])
        stored = result["embeddings"] if result["embeddings"] is not None else []
        by_id = dict(zip(result["ids"], stored, strict=True))
        return np.array([by_id.get(i, np.zeros(dim)) for i in ids], dtype=np.float32).reshape(len(ids), dim)

    def is_consistent(self) -> bool:
        """Chroma holds exactly the vectors the manifest implies (cheap: ids only)."""
        chunks = {cid for a in self.articles.values() for cid in a.chunk_ids()}
        sentence_files = {self.sentences.path(a) for a in self.articles.values()}
        return (
            set(self.collection.get(include=[])["ids"]) == chunks and self.sentences.files() == sentence_files
        )

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
        """Make Chroma and the manifest hold exactly ``articles``.

        ``only`` limits the comparison with Chroma to those article ids (what an ordinary ingest
        changed), so re-indexing one article in a large archive does not list every vector; without it
        every id is compared, which is how an interrupted ingest is completed. Returns how many chunks
        and sentences were embedded.
        """
        scope = articles.values() if only is None else [a for a in articles.values() if a.id in only]
        chunks = {cid: (a, i, *a.chunks[i]) for a in scope for i, cid in enumerate(a.chunk_ids())}
        try:
            chunk_changes = self._sync_collection(self.collection, chunks, only, progress)
            sentence_changes = self._sync_sentences(list(scope), only, progress)
            unchanged = (
                chunk_changes == sentence_changes == (0, 0)
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
        except RagIndexError:
            raise
        except Exception as exc:  # disk full, read-only folder, a broken database: all end here
            raise RagIndexError(
                f"Writing the index in {self.root} failed ({exc.__class__.__name__}: {exc}). Nothing "
                "already indexed was lost. Free disk space or fix the folder's permissions, then run "
                "`rag ingest` again: it completes the interrupted ingest."
            ) from exc
        return chunk_changes[0], sentence_changes[0]

    def _sync_collection(
        self,
        collection: Collection,
        wanted: dict[str, tuple[IndexedArticle, int, int, int]],
        only: set[str] | None,
        progress: bool,
    ) -> tuple[int, int]:
        """Delete the vectors nobody wants any more, embed and add the wanted ones that are missing.

        Returns (added, deleted).
        """
        if only is None:
            existing = set(collection.get(include=[])["ids"])
        elif only:
            wanted_ids: list[str | int | float | bool] = list(sorted(only))
            article_filter: Where = {"article_id": {"$in": wanted_ids}}  # type: ignore[dict-item]
            existing = set(collection.get(where=article_filter, include=[])["ids"])
        else:
            existing = set()
        stale = sorted(existing - wanted.keys())
        batch = self.client.get_max_batch_size()
        for start in range(0, len(stale), batch):
            collection.delete(ids=stale[start : start + batch])
        missing = [key for key in wanted if key not in existing]
        for start in range(0, len(missing), batch):
            ids = missing[start : start + batch]
            spans = [wanted[key] for key in ids]
            texts = [article.text[s:e] for article, _, s, e in spans]
            collection.add(
                ids=ids,
                embeddings=self.embedder.embed(texts, progress=progress),
                documents=texts,
                metadatas=[
                    {"article_id": article.id, "index": index, "start": s, "end": e}
                    for article, index, s, e in spans
                ],
            )
        return len(missing), len(stale)

    def _sync_sentences(
        self, scope: list[IndexedArticle], only: set[str] | None, progress: bool
    ) -> tuple[int, int]:
        """Write the sentence vectors of articles that have none, delete those nobody wants.

        Articles are embedded in groups of about ``_SENTENCE_GROUP`` sentences, so that memory stays
        flat however large the archive, while each model call still gets many sentences to batch.
        Returns (sentences embedded, files deleted).
        """
        deleted = self.sentences.remove_stale(scope, only)
        missing = [a for a in scope if not self.sentences.has(a)]
        bar = tqdm(total=sum(len(a.sentences) for a in missing), desc="Sentences", disable=not progress)
        embedded, group = 0, list[IndexedArticle]()

        def flush() -> None:
            texts = [a.text[s:e] for a in group for s, e in a.sentences]
            vectors = self.embedder.embed(texts)
            offset = 0
            for member in group:
                self.sentences.write(member, vectors[offset : offset + len(member.sentences)])
                offset += len(member.sentences)
            bar.update(len(texts))
            group.clear()

        for article in missing:
            group.append(article)
            embedded += len(article.sentences)
            if sum(len(a.sentences) for a in group) >= _SENTENCE_GROUP:
                flush()
        if group:
            flush()
        bar.close()
        return embedded, deleted

    def wipe(self) -> None:
        """Delete the whole index (for ``--rebuild``), and the sentence collection of format-2 indexes."""
        names = {self.settings.collection, f"{self.settings.collection}-sentences"}
        for existing in self.client.list_collections():
            if existing.name in names:
                self.client.delete_collection(existing.name)
        self._collections.clear()
        self.manifest = None
        (self.root / _MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self.root / "bm25", ignore_errors=True)
        self.sentences.wipe()

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


def atomic_write(path: Path, text: str) -> None:
    """Write-then-rename, so a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
