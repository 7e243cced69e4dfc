"""Stage 3: the persistent index: a Chroma collection of chunk embeddings plus a JSON manifest.

The manifest holds each article's canonical text, metadata, content hash and chunk spans; Chroma holds
one vector per chunk under a deterministic id (``article:hash:n``). Syncing is a set difference between
the ids the manifest implies and the ids Chroma has, so an interrupted ingest is completed, not
duplicated, by the next one, and running an ingest twice changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from rag import offline  # noqa: F401
from rag.settings import Settings
from rag.types import Article, Chunk

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from rag.embeddings import Embedder

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
_MANIFEST = "manifest.json"
_IN_PROGRESS = "ingest-in-progress.json"
_LOCK = "ingest.lock"


class RagIndexError(RuntimeError):
    """Base class for index problems a user must act on."""


class IndexMismatchError(RagIndexError):
    """The index was built with another embedding model or chunking; mixing them gives wrong answers."""


class IndexBusyError(RagIndexError):
    """Another ingest holds the index."""


class IndexedArticle(Article):
    chunks: list[tuple[int, int]]

    def chunk(self, index: int) -> Chunk:
        start, end = self.chunks[index]
        return Chunk(article_id=self.id, index=index, start=start, end=end, text=self.text[start:end])

    def iter_chunks(self) -> Iterator[Chunk]:
        return (self.chunk(i) for i in range(len(self.chunks)))

    def chunk_ids(self) -> list[str]:
        return [chunk_id(self.id, self.content_hash, i) for i in range(len(self.chunks))]


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
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
        self._collection: Collection | None = None
        self.manifest = self._read_manifest()
        self.version = 0  # bumped on every change, so side indexes (BM25) know to rebuild

    # --- opening ---------------------------------------------------------------------------------------
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
        if self._collection is None:
            self._collection = self._open_collection()
        return self._collection

    @property
    def client(self) -> ClientAPI:
        if self._client is None:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            self.root.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(
                path=str(self.root / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
            )
        return self._client

    def _open_collection(self) -> Collection:
        signature = self.expected_signature()
        collection = self.client.get_or_create_collection(
            self.settings.collection,
            embedding_function=None,  # never let Chroma pick (and download) a default model
            configuration={"hnsw": {"space": "cosine"}},
            metadata={k: v for k, v in signature.items()},
        )
        stored = {k: (collection.metadata or {}).get(k) for k in signature}
        if stored != signature:
            raise IndexMismatchError(
                f"The Chroma collection '{self.settings.collection}' in {self.root} was built with "
                f"{stored}, but settings say {signature}. Rebuild with `rag ingest --rebuild`."
            )
        return collection

    # --- reading ---------------------------------------------------------------------------------------
    @property
    def articles(self) -> dict[str, IndexedArticle]:
        return self.manifest.articles if self.manifest else {}

    def all_chunks(self) -> list[Chunk]:
        return [chunk for article in self.articles.values() for chunk in article.iter_chunks()]

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
        result = self.collection.get(ids=ids, include=["embeddings"])
        by_id = dict(
            zip(result["ids"], result["embeddings"] if result["embeddings"] is not None else [], strict=True)
        )
        dim = self.embedder.dimension
        return np.array([by_id.get(i, np.zeros(dim)) for i in ids], dtype=np.float32).reshape(len(ids), dim)

    def is_consistent(self) -> bool:
        """Chroma holds exactly the chunks the manifest implies (cheap: ids only)."""
        desired = {cid for a in self.articles.values() for cid in a.chunk_ids()}
        return set(self.collection.get(include=[])["ids"]) == desired

    # --- writing ---------------------------------------------------------------------------------------
    @contextmanager
    def writing(self, paths: Iterable[str]) -> Iterator[None]:
        """Exclusive write access, with a marker that survives a crash until the write completes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise IndexBusyError(
                    f"Another ingest is writing to {self.root}; try again when it has finished."
                ) from exc
            marker = self.root / _IN_PROGRESS
            _atomic_write(marker, json.dumps({"paths": sorted(set(paths))}))
            yield
            marker.unlink(missing_ok=True)

    def sync(self, articles: dict[str, IndexedArticle], *, progress: bool = False) -> int:
        """Make Chroma and the manifest hold exactly ``articles``; returns how many chunks were embedded."""
        wanted = {cid: (a, i) for a in articles.values() for i, cid in enumerate(a.chunk_ids())}
        existing = set(self.collection.get(include=[])["ids"])
        stale = sorted(existing - wanted.keys())
        batch = self.client.get_max_batch_size()
        for start in range(0, len(stale), batch):
            self.collection.delete(ids=stale[start : start + batch])
        missing = [cid for cid in wanted if cid not in existing]
        chunks = [wanted[cid][0].chunk(wanted[cid][1]) for cid in missing]
        for start in range(0, len(missing), batch):
            part = chunks[start : start + batch]
            vectors = self.embedder.embed([c.text for c in part], progress=progress)
            self.collection.add(
                ids=missing[start : start + batch],
                embeddings=vectors,
                documents=[c.text for c in part],
                metadatas=[
                    {"article_id": c.article_id, "index": c.index, "start": c.start, "end": c.end}
                    for c in part
                ],
            )
        self.manifest = Manifest(signature=self.expected_signature(), articles=articles)
        _atomic_write(self.root / _MANIFEST, self.manifest.model_dump_json())
        self.version += 1
        return len(missing)

    def wipe(self) -> None:
        """Delete the whole index (for ``--rebuild``)."""
        if self.settings.collection in {c.name for c in self.client.list_collections()}:
            self.client.delete_collection(self.settings.collection)
        self._collection = None
        self.manifest = None
        (self.root / _MANIFEST).unlink(missing_ok=True)
        self.version += 1

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


def _atomic_write(path: Path, text: str) -> None:
    """Write-then-rename, so a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
