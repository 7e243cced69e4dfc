"""Sentence vectors on disk: one ``.npy`` file per article version, beside the manifest.

The answer step looks sentence vectors up by (article, sentence) and never searches them, so they need
no vector database: as a Chroma collection they cost an HNSW index, a second copy of every sentence
and most of the index's size, for nothing (measured: a fifth of ingest time at 300 articles). A file is
written under a temporary name and renamed, so a crash leaves an article's vectors whole or absent; the
name carries the article's content hash, so a changed article never reads its old vectors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rag.index import IndexedArticle

_SUFFIX = ".npy"


@lru_cache(maxsize=2048)
def _read(path: Path) -> np.ndarray:
    """Memory-mapped: only the rows a query touches are read from disk."""
    vectors: np.ndarray = np.load(path, mmap_mode="r")
    return vectors


class SentenceStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, article: IndexedArticle) -> Path:
        return self.folder / f"{article.id}.{article.content_hash[:12]}{_SUFFIX}"

    def has(self, article: IndexedArticle) -> bool:
        return self.path(article).exists()

    def files(self) -> set[Path]:
        return set(self.folder.glob(f"*{_SUFFIX}")) if self.folder.exists() else set()

    def vectors(self, article: IndexedArticle, indices: list[int]) -> np.ndarray:
        return np.asarray(_read(self.path(article))[indices], dtype=np.float32)

    def write(self, article: IndexedArticle, vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            np.save(out, np.asarray(vectors, dtype=np.float32))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path(article))

    def remove_stale(self, wanted: Iterable[IndexedArticle], scope: set[str] | None) -> int:
        """Delete files no wanted article version owns (only those of ``scope``'s articles, if given),
        and temporary files a crash left behind. Returns how many vector files were deleted."""
        keep = {self.path(a) for a in wanted}
        stale = [
            p for p in self.files() if p not in keep and (scope is None or p.name.split(".", 1)[0] in scope)
        ]
        for path in stale:
            path.unlink(missing_ok=True)
        for leftover in self.folder.glob("*.tmp") if self.folder.exists() else []:
            leftover.unlink(missing_ok=True)
        _read.cache_clear()
        return len(stale)

    def wipe(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        _read.cache_clear()
