"""Stage 3c: chunk and sentence vectors on disk: one file per article version, in the index folder.

A file holds the article's chunk vectors, then its sentence vectors, one row each. The answer step looks
sentence vectors up by (article, sentence), and diversification compares the retrieved chunks with each
other; neither searches, so neither needs a vector database. As a Chroma collection, sentence vectors
cost an HNSW index, a second copy of every sentence and most of the index's size, for nothing (a fifth
of ingest time at 300 articles); reading chunk vectors back from Chroma cost ~1.3 ms a query at 3,000
articles, reading them from these files ~0.5 ms. A file is written under a temporary name and renamed,
so a crash leaves an article's vectors whole or absent; the name carries the article's content hash,
so a changed article never reads its old vectors, and a reader still on the previous version reads
its file until the ingest that replaced it deletes it (then the reader retries on the new state).
Against a Chroma server these files are this machine's cache, made from the article text when missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rag.types import IndexedArticle

# Raw little-endian float32 rows, no header: the article store knows the row count (chunks + sentences).
# Parsing an .npy header, or setting up a memory map, took 60-90 us a file, and a query opens about
# ten files; a plain read takes ~35 us.
_SUFFIX = ".f32"
_DTYPE = np.dtype("<f4")


@lru_cache(maxsize=256)
def _read(path: Path, rows: int) -> np.ndarray:
    """A whole file (tens of KB), cached: the articles a query touches are often the next one's too."""
    vectors = np.frombuffer(path.read_bytes(), dtype=_DTYPE).reshape(rows, -1)
    vectors.flags.writeable = False
    return vectors


class ArticleVectors:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def name(article_id: str, content_hash: str) -> str:
        return f"{article_id}.{content_hash[:12]}{_SUFFIX}"

    def path(self, article: IndexedArticle) -> Path:
        return self.folder / self.name(article.id, article.content_hash)

    def has(self, article: IndexedArticle) -> bool:
        return self.path(article).exists()

    def has_version(self, article_id: str, content_hash: str) -> bool:
        return (self.folder / self.name(article_id, content_hash)).exists()

    def names(self) -> set[str]:
        """The vector files present, by name."""
        return {name for name in self._names() if name.endswith(_SUFFIX)}

    def _names(self) -> list[str]:
        """File names only: a Path for each of 3,000 files cost a re-ingest ~60 ms."""
        return os.listdir(self.folder) if self.folder.exists() else []

    def chunk_vectors(self, article: IndexedArticle, indices: list[int]) -> np.ndarray:
        return self._rows(article, indices)

    def sentence_vectors(self, article: IndexedArticle, indices: list[int]) -> np.ndarray:
        return self._rows(article, [len(article.chunks) + i for i in indices])

    def _rows(self, article: IndexedArticle, rows: list[int]) -> np.ndarray:
        return np.array(_read(self.path(article), len(article.chunks) + len(article.sentences))[rows])

    def write(self, article: IndexedArticle, chunks: np.ndarray, sentences: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            out.write(np.vstack([chunks, sentences]).astype(_DTYPE).tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path(article))

    def remove_stale(self, keep: set[str], scope: set[str] | None) -> int:
        """Delete files not named in ``keep`` (only those of ``scope``'s articles, if given), and
        temporary files a crash left behind. Returns how many vector files were deleted."""
        names = self._names()
        stale = [
            name
            for name in names
            if name.endswith(_SUFFIX)
            and name not in keep
            and (scope is None or name.split(".", 1)[0] in scope)
        ]
        for name in stale + [name for name in names if name.endswith(".tmp")]:
            (self.folder / name).unlink(missing_ok=True)
        _read.cache_clear()
        return len(stale)

    def wipe(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        _read.cache_clear()
