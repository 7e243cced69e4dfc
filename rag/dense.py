"""Stage 3b: the dense index: one Chroma vector per chunk, what retrieval's nearest-neighbour search reads.

Mirrors ``sparse.py``: it holds what the article store implies, is written only by an ingest, and is
searched by queries. Chunk ids are deterministic (``article:hash:n``), so an ingest adds only what is
missing and deletes what is stale, and a search can tell a chunk of the version it knows from one of a
version committed since.

Chroma's embedded database keeps its HNSW graph in memory per process: a process that did not write a
change does not see it (chromadb 1.5.9: another process's additions stayed invisible, and its deletions
stayed visible, until the client was opened again). ``reopen`` is how a reader catches up when the
article store's generation moves on; against a server every query sees the server's current state.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from rag import offline  # noqa: F401
from rag.errors import IndexMismatchError, RagIndexError
from rag.settings import Settings

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection


def chunk_id(article_id: str, content_hash: str, index: int) -> str:
    return f"{article_id}:{content_hash[:12]}:{index}"


def parse_chunk_id(value: str) -> tuple[str, str, int]:
    """(article id, the first 12 characters of its content hash, chunk index)."""
    article_id, short_hash, index = value.rsplit(":", 2)
    return article_id, short_hash, int(index)


class DenseIndex:
    def __init__(self, settings: Settings, signature: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self.root = Path(settings.index_dir)
        self.signature = signature  # what the collection records; asked for when it is first opened
        self._client: ClientAPI | None = None
        self._collection: Collection | None = None
        # chromadb's client set-up is not thread-safe (concurrent first queries failed with "Could not
        # connect to tenant default_tenant", chromadb 1.5.9), and a reopen must not pull the database
        # from under a running search: one lock for opening, searching and reopening.
        self._lock = threading.RLock()

    @property
    def remote(self) -> bool:
        return bool(self.settings.chroma_url)

    # --- opening -------------------------------------------------------------------------------------
    @staticmethod
    def import_library() -> None:
        """Import chromadb now (0.45 s, holding the interpreter lock), so that a start-up can load the
        embedding model beside it; opening the client later finds it imported."""
        import chromadb  # noqa: F401

    @property
    def client(self) -> ClientAPI:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> ClientAPI:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from chromadb.errors import ChromaError

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        url = self.settings.chroma_url
        try:
            if url:
                parsed = urlparse(url)
                return chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1",
                    port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https",
                    settings=chroma_settings,
                )
            self.root.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.root / "chroma"), settings=chroma_settings)
        except (OSError, ValueError, RuntimeError, ChromaError) as exc:
            if url:
                raise RagIndexError(
                    f"Cannot reach the Chroma server at {url} ({exc}). Start it (`make chroma`) or "
                    "unset RAG_CHROMA_URL to use the embedded database."
                ) from exc
            if not os.access(self.root, os.W_OK) or "readonly" in str(exc).replace("-", ""):
                raise RagIndexError(
                    f"The index folder {self.root} is read-only, and Chroma needs to write even to read "
                    "it. Make it writable, or copy it to a writable folder and point RAG_INDEX_DIR there."
                ) from exc
            raise RagIndexError(
                f"Cannot open the index in {self.root} ({exc.__class__.__name__}: {exc}). If the folder "
                "is damaged or belongs to something else, rebuild with `rag ingest --rebuild` or point "
                "RAG_INDEX_DIR at another folder."
            ) from exc

    @property
    def collection(self) -> Collection:
        with self._lock:
            if self._collection is None:
                self._collection = self._open_collection()
            return self._collection

    def _open_collection(self) -> Collection:
        name = self.settings.collection
        signature = self.signature()
        collection = self.client.get_or_create_collection(
            name,
            embedding_function=None,  # never let Chroma pick (and download) a default model
            configuration={"hnsw": {"space": "cosine"}},
            metadata=dict(signature),
        )
        stored = {k: (collection.metadata or {}).get(k) for k in signature}
        if stored != signature:
            raise IndexMismatchError(
                f"The Chroma collection '{name}' in {self.root} was built with {stored}, but settings say "
                f"{signature}. Rebuild with `rag ingest --rebuild`."
            )
        return collection

    def reopen(self) -> None:
        """See what other processes wrote since this one opened the embedded database."""
        if self.remote:
            return
        from chromadb.api.shared_system_client import SharedSystemClient

        with self._lock:
            if self._client is None:
                return
            self._client = self._collection = None
            SharedSystemClient.clear_system_cache()

    def warm(self) -> None:
        """Load the collection's nearest-neighbour graph now. The embedded database reads it from disk on
        the first search (0.9 s at 186,000 chunks, chromadb 1.5.9) without holding the interpreter lock,
        so a start-up can do its own checks meanwhile."""
        if self.remote:
            return  # the server holds its graph in memory already
        probe = np.zeros((1, int(self.signature()["embedding_dim"])), dtype=np.float32)
        probe[0, 0] = 1.0
        with self._lock:
            self.collection.query(query_embeddings=probe, n_results=1, include=[])

    # --- reading -------------------------------------------------------------------------------------
    def search(self, query_vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity) of the ``k`` nearest chunks, best first."""
        with self._lock:
            result = self.collection.query(
                query_embeddings=query_vector.astype(np.float32).reshape(1, -1),
                n_results=k,
                include=["distances"],
            )
        distances = (result["distances"] or [[]])[0]
        return [(i, 1.0 - float(d)) for i, d in zip(result["ids"][0], distances, strict=True)]

    def ids(self) -> set[str]:
        """Every chunk id."""
        with self._lock:
            return set(self.collection.get(include=[])["ids"])

    def present(self, ids: Iterable[str]) -> set[str]:
        """Which of these chunk ids Chroma holds."""
        wanted = sorted(ids)
        if not wanted:
            return set()
        with self._lock:
            return set(self.collection.get(ids=wanted, include=[])["ids"])

    # --- writing (at ingest) -------------------------------------------------------------------------
    def add(
        self, ids: list[str], vectors: np.ndarray, documents: list[str], metadatas: list[dict[str, Any]]
    ) -> None:
        batch = self.client.get_max_batch_size()
        with self._lock:
            for start in range(0, len(ids), batch):
                end = start + batch
                self.collection.add(
                    ids=ids[start:end],
                    embeddings=vectors[start:end],
                    documents=documents[start:end],
                    metadatas=metadatas[start:end],  # type: ignore[arg-type]
                )

    def delete(self, ids: Iterable[str]) -> None:
        stale = sorted(ids)
        batch = self.client.get_max_batch_size()
        with self._lock:
            for start in range(0, len(stale), batch):
                self.collection.delete(ids=stale[start : start + batch])

    def wipe(self) -> None:
        """Delete the chunk collection (and the sentence collection an older format kept)."""
        from chromadb.errors import NotFoundError

        names = (self.settings.collection, f"{self.settings.collection}-sentences")
        with self._lock:
            for name in names:
                with contextlib.suppress(NotFoundError):
                    self.client.delete_collection(name)
            self._collection = None
