"""Cited answers over a collection of news articles, offline.

import rag
rag.ingest()                       # index settings.corpus_dir (incremental)
ans = rag.query("Who offered to host the talks?")
print(ans.text, ans.citations)
for piece in rag.stream("Where could the talks be held?"):   # text pieces, then the Answer
    print(piece)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag import offline  # noqa: F401  (offline switches before any model or hub library loads)
from rag.settings import Settings, get_settings
from rag.types import Answer, Article, Citation, IngestReport, Passage

if TYPE_CHECKING:
    from rag.pipeline import Pipeline
    from rag.types import IndexedArticle

__all__ = [
    "Answer",
    "Article",
    "ArticleEmbeddings",
    "ArticleRetriever",
    "Citation",
    "IngestReport",
    "Passage",
    "Settings",
    "add_files",
    "answer_chain",
    "article",
    "configure",
    "get_pipeline",
    "get_settings",
    "ingest",
    "list_articles",
    "query",
    "stream",
]

_pipeline: Pipeline | None = None
_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """The LangChain classes import langchain-core only when first used."""
    if name in ("ArticleRetriever", "ArticleEmbeddings", "answer_chain"):
        from rag import lc

        return getattr(lc, name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")


def configure(settings: Settings | None = None, **overrides: Any) -> Settings:
    """Use these settings from now on (e.g. ``rag.configure(index_dir="/tmp/idx")``). Overrides are
    validated like any setting: an unknown name or a bad value raises ``rag.errors.SettingsError``."""
    global _pipeline
    base = settings or get_settings()
    chosen = base.updated(**overrides)
    from rag.pipeline import Pipeline

    with _lock:
        _pipeline = Pipeline(chosen)
    return chosen


def get_pipeline() -> Pipeline:
    global _pipeline
    with _lock:
        if _pipeline is None:
            from rag.pipeline import Pipeline

            _pipeline = Pipeline(get_settings())
        return _pipeline


def ingest(paths: Iterable[str | Path] | None = None, *, rebuild: bool = False) -> IngestReport:
    """Index the corpus folder (or the given files and folders): new and changed articles are embedded,
    deleted files are removed, unchanged ones cost nothing."""
    return get_pipeline().ingest(paths, rebuild=rebuild)


def add_files(
    files: Iterable[tuple[str | Path, str]], on_wait: Callable[[], None] | None = None
) -> IngestReport:
    """Copy (path, original file name) pairs into the corpus folder and index them; if another ingest
    is writing, wait for it (``on_wait`` is told once, e.g. to show "queued")."""
    return get_pipeline().add_files(files, on_wait=on_wait)


def query(
    question: str,
    history: Sequence[dict[str, Any]] | None = None,
    *,
    on_token: Callable[[str], None] | None = None,
) -> Answer:
    """Answer from the articles, with citations; ``history`` is the chat so far, for follow-ups.
    ``on_token`` receives the answer text piece by piece as the generator writes it."""
    return get_pipeline().query(question, history, on_token=on_token)


def stream(question: str, history: Sequence[dict[str, Any]] | None = None) -> Iterator[str | Answer]:
    """Pieces of the answer text as they are written, then the final, checked ``Answer``."""
    return get_pipeline().stream(question, history)


def article(article_id: str) -> IndexedArticle:
    """The indexed article, whose ``text`` every citation's offsets point into."""
    return get_pipeline().article(article_id)


def list_articles() -> list[IndexedArticle]:
    """Every indexed article (named so as not to shadow the ``rag.articles`` module)."""
    return get_pipeline().articles()
