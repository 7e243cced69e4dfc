"""Stage 3a: the article store: canonical article text, metadata and spans, and the index's generation.

This is the index's single source of truth. Everything else the index keeps (chunk vectors in Chroma,
the per-article vector files, BM25) is derived from it and may be rebuilt from it; the generation number
says which committed state a process has seen. An ingest commits all its articles in one transaction
that bumps the generation, so a reader sees the state before an ingest or after it, never half of one.

Two backends with one interface:
- ``SqliteArticleStore`` (the embedded default): one SQLite database in WAL mode in the index folder.
  Readers never wait for a writer; an article is read by id when a query needs it, so start-up does not
  read the archive (the JSON manifest it replaces was read whole, 4.4 s at 30,000 articles, and
  rewritten whole by every ingest).
- ``ChromaArticleStore`` (``RAG_CHROMA_URL``): the same records in Chroma collections on the server, so
  two machines share one index through the server alone.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.errors import IndexBusyError, IndexMismatchError, RagIndexError
from rag.types import IndexedArticle

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Metadata, Where

# 5: articles in a SQLite (or Chroma) store with a generation per commit, replacing manifest.json (4).
STORE_FORMAT = 5
DATABASE = "articles.db"


@dataclass(frozen=True)
class CatalogEntry:
    """What an ingest compares files against and BM25 keeps in step with: an article without its text."""

    id: str
    source: str
    stamp: str
    content_hash: str
    chunks: int
    text_hash: str  # of the text alone: the same text under two names is indexed once

    @classmethod
    def of(cls, article: IndexedArticle) -> CatalogEntry:
        return cls(
            article.id,
            article.source,
            article.stamp,
            article.content_hash,
            len(article.chunks),
            text_hash(article.text),
        )


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoreState:
    format: int
    generation: int
    signature: dict[str, Any]
    chunk_count: int


class ArticleStore(Protocol):
    """What the index needs from a store; both backends below provide it."""

    def exists(self) -> bool: ...
    def state(self) -> StoreState | None: ...
    def generation(self) -> int: ...
    def catalog(self) -> dict[str, CatalogEntry]: ...
    def get(self, ids: Iterable[str]) -> dict[str, IndexedArticle]: ...
    def changed_since(self, generation: int) -> set[str]: ...
    def commit(
        self, upserts: list[IndexedArticle], removals: list[str], signature: dict[str, Any]
    ) -> int: ...
    def writer(self) -> AbstractContextManager[None]: ...
    def wipe(self) -> None: ...


def _row_to_article(row: sqlite3.Row | dict[str, Any], text: str) -> IndexedArticle:
    return IndexedArticle(
        id=row["id"],
        title=row["title"],
        text=text,
        source=row["source"],
        outlet=row["outlet"] or None,
        date=row["date"] or None,
        content_hash=row["content_hash"],
        stamp=row["stamp"],
        chunks=[tuple(span) for span in json.loads(row["chunks"])],
        sentences=[tuple(span) for span in json.loads(row["sentences"])],
    )


def _spans(spans: list[tuple[int, int]]) -> str:
    return json.dumps(spans, separators=(",", ":"))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS articles (
    id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    source TEXT NOT NULL,
    stamp TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    title TEXT NOT NULL,
    outlet TEXT,
    date TEXT,
    text TEXT NOT NULL,
    chunks TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    sentences TEXT NOT NULL,
    text_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS articles_by_generation ON articles (generation);
CREATE TABLE IF NOT EXISTS removed (id TEXT PRIMARY KEY, generation INTEGER NOT NULL);
"""


class SqliteArticleStore:
    """Articles in one SQLite database (WAL mode: readers see the last commit while a writer writes)."""

    def __init__(self, root: Path, busy_timeout_s: float) -> None:
        self.path = root / DATABASE
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not be shared between threads)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process never loses a commit; only a power cut can lose the last.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            self._local.connection = connection
        return connection

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._connection()
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.path, exc) from exc

    def exists(self) -> bool:
        return self.path.exists() and self.state() is not None

    def state(self) -> StoreState | None:
        with self._reading() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "format" not in meta:
            return None
        return StoreState(
            format=int(meta["format"]),
            generation=int(meta.get("generation", 0)),
            signature=json.loads(meta.get("signature", "{}")),
            chunk_count=int(meta.get("chunk_count", 0)),
        )

    def generation(self) -> int:
        """Checked before every query: one indexed read, a few microseconds."""
        with self._reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def catalog(self) -> dict[str, CatalogEntry]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, source, stamp, content_hash, chunk_count, text_hash FROM articles"
            ).fetchall()
        return {r[0]: CatalogEntry(*r) for r in rows}

    def get(self, ids: Iterable[str]) -> dict[str, IndexedArticle]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, IndexedArticle] = {}
        with self._reading() as db:
            for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
                part = wanted[start : start + 500]
                marks = ",".join("?" * len(part))
                for row in db.execute(f"SELECT * FROM articles WHERE id IN ({marks})", part):
                    found[row["id"]] = _row_to_article(row, row["text"])
        return found

    def changed_since(self, generation: int) -> set[str]:
        """Ids written or removed by commits after ``generation``: what a cache must drop."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id FROM articles WHERE generation > ?1 "
                "UNION SELECT id FROM removed WHERE generation > ?1",
                (generation,),
            ).fetchall()
        return {r[0] for r in rows}

    def commit(self, upserts: list[IndexedArticle], removals: list[str], signature: dict[str, Any]) -> int:
        """One transaction: the new and changed articles, the removed ones, the next generation."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            generation = (int(row[0]) if row else 0) + 1
            db.executemany(
                "INSERT OR REPLACE INTO articles VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        a.id, generation, a.source, a.stamp, a.content_hash, a.title, a.outlet, a.date,
                        a.text, _spans(a.chunks), len(a.chunks), _spans(a.sentences), text_hash(a.text),
                    )
                    for a in upserts
                ],
            )  # fmt: skip
            db.executemany("DELETE FROM articles WHERE id = ?", [(i,) for i in removals])
            db.executemany(
                "INSERT OR REPLACE INTO removed VALUES (?, ?)", [(i, generation) for i in removals]
            )
            db.execute("DELETE FROM removed WHERE id IN (SELECT id FROM articles)")
            (chunk_count,) = db.execute("SELECT COALESCE(SUM(chunk_count), 0) FROM articles").fetchone()
            meta = {
                "format": STORE_FORMAT,
                "generation": generation,
                "signature": json.dumps(signature, sort_keys=True),
                "chunk_count": chunk_count,
            }
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()]
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return generation

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Writers on one machine are serialised by the index folder's lock file; nothing to add here."""
        yield

    def wipe(self) -> None:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def _unreadable(path: Path, exc: Exception) -> RagIndexError:
    return RagIndexError(
        f"The article store {path} is unreadable ({exc.__class__.__name__}: {exc}). "
        "Rebuild the index with `rag ingest --rebuild`."
    )


class ChromaArticleStore:
    """The same records in two Chroma collections, for client/server mode: ``<name>-articles`` (one
    record per article: text as the document, metadata and spans as metadata) and ``<name>-state``
    (the generation, the signature, removals, and a writer's lease).

    Chroma has no transactions, so the generation record is written last: a reader that sees a
    generation sees every article written before it. Chroma has no lock either; writers on different
    machines take a lease (a record naming the holder, with an expiry), checked again after writing it.
    """

    def __init__(self, client: ClientAPI, name: str, lease_s: float, wait_s: float) -> None:
        self.client = client
        self.name = name
        self.lease_s = lease_s
        self.wait_s = wait_s
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def _collection(self, suffix: str) -> Collection:
        with self._lock:
            if suffix not in self._collections:
                self._collections[suffix] = self.client.get_or_create_collection(
                    f"{self.name}-{suffix}", embedding_function=None
                )
            return self._collections[suffix]

    @property
    def _articles(self) -> Collection:
        return self._collection("articles")

    @property
    def _state(self) -> Collection:
        return self._collection("state")

    def exists(self) -> bool:
        return self.state() is not None

    def _record(self, record_id: str) -> dict[str, Any] | None:
        got = self._state.get(ids=[record_id], include=["metadatas"])
        metadatas: list[Metadata] = got["metadatas"] or []
        return dict(metadatas[0]) if metadatas else None

    def _state_record(self) -> dict[str, Any] | None:
        return self._record("state")

    def state(self) -> StoreState | None:
        meta = self._state_record()
        if meta is None:
            return None
        return StoreState(
            format=int(meta["format"]),
            generation=int(meta["generation"]),
            signature=json.loads(str(meta["signature"])),
            chunk_count=int(meta["chunk_count"]),
        )

    def generation(self) -> int:
        meta = self._state_record()
        return int(meta["generation"]) if meta else 0

    def catalog(self) -> dict[str, CatalogEntry]:
        got = self._articles.get(include=["metadatas"])
        return {
            i: CatalogEntry(
                i, str(m["source"]), str(m["stamp"]), str(m["content_hash"]), int(str(m["chunk_count"])),
                str(m["text_hash"]),
            )
            for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)
        }  # fmt: skip

    def get(self, ids: Iterable[str]) -> dict[str, IndexedArticle]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        got = self._articles.get(ids=wanted, include=["metadatas", "documents"])
        return {
            i: _row_to_article({**m, "id": i}, str(d))
            for i, m, d in zip(got["ids"], got["metadatas"] or [], got["documents"] or [], strict=True)
        }

    def changed_since(self, generation: int) -> set[str]:
        later: Where = {"generation": {"$gt": generation}}  # type: ignore[dict-item]
        written = self._articles.get(where=later, include=[])["ids"]
        removals: Where = {"$and": [{"kind": "removed"}, later]}
        removed = self._state.get(where=removals, include=["metadatas"])
        return set(written) | {str(m["article_id"]) for m in removed["metadatas"] or []}

    def commit(self, upserts: list[IndexedArticle], removals: list[str], signature: dict[str, Any]) -> int:
        generation = self.generation() + 1
        batch = self.client.get_max_batch_size()
        for start in range(0, len(upserts), batch):
            part = upserts[start : start + batch]
            self._articles.upsert(
                ids=[a.id for a in part],
                embeddings=_unit(len(part)),  # looked up by id, never searched
                documents=[a.text for a in part],
                metadatas=[
                    {
                        "generation": generation,
                        "source": a.source,
                        "stamp": a.stamp,
                        "content_hash": a.content_hash,
                        "title": a.title,
                        "outlet": a.outlet or "",
                        "date": a.date or "",
                        "chunks": _spans(a.chunks),
                        "chunk_count": len(a.chunks),
                        "sentences": _spans(a.sentences),
                        "text_hash": text_hash(a.text),
                    }
                    for a in part
                ],
            )
        for start in range(0, len(removals), batch):
            gone = removals[start : start + batch]
            self._articles.delete(ids=gone)
            self._state.upsert(
                ids=[f"removed:{i}" for i in gone],
                embeddings=_unit(len(gone)),
                metadatas=[{"kind": "removed", "article_id": i, "generation": generation} for i in gone],
            )
        chunk_count = sum(e.chunks for e in self.catalog().values())
        self._state.upsert(
            ids=["state"],
            embeddings=_unit(1),
            metadatas=[
                {
                    "kind": "state",
                    "format": STORE_FORMAT,
                    "generation": generation,
                    "signature": json.dumps(signature, sort_keys=True),
                    "chunk_count": chunk_count,
                }
            ],
        )
        return generation

    @contextmanager
    def writer(self) -> Iterator[None]:
        """A lease on the server, so that ingests from different machines take turns."""
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        while not self._take_lease(holder):
            if time.monotonic() > deadline:
                raise IndexBusyError(
                    "Another ingest is writing to the Chroma server's index; try again when it has finished."
                )
            time.sleep(0.2)
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(holder, done), daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            self._state.delete(ids=["lease"])

    def _renew(self, holder: str, done: threading.Event) -> None:
        """Keep the lease while the ingest runs; a writer that dies lets it expire."""
        while not done.wait(self.lease_s / 3):
            self._write_lease(holder)

    def _write_lease(self, holder: str) -> None:
        self._state.upsert(
            ids=["lease"],
            embeddings=_unit(1),
            metadatas=[{"kind": "lease", "holder": holder, "expires": time.time() + self.lease_s}],
        )

    def _take_lease(self, holder: str) -> bool:
        current = self._record("lease")
        if current is not None and float(current["expires"]) > time.time():
            return False
        self._write_lease(holder)
        time.sleep(0.05)  # another writer that read the same expired lease writes its own now
        again = self._record("lease")
        return again is not None and again["holder"] == holder

    def wipe(self) -> None:
        from chromadb.errors import NotFoundError

        for suffix in ("articles", "state"):
            with suppress(NotFoundError):
                self.client.delete_collection(f"{self.name}-{suffix}")
        self._collections.clear()


def _unit(rows: int) -> np.ndarray:
    """Chroma stores a vector with every record; these records are read by id, so any will do."""
    return np.ones((rows, 1), dtype=np.float32)


def check_format(state: StoreState | None, where: Path | str) -> None:
    if state is not None and state.format != STORE_FORMAT:
        raise IndexMismatchError(
            f"The index in {where} has format {state.format}; this version reads {STORE_FORMAT}. "
            "Rebuild it with `rag ingest --rebuild`."
        )
