"""LangChain building blocks over our pipeline: drop them into any LangChain app without adapters.

``ArticleRetriever`` (hybrid BM25 + dense retrieval, de-duplicated), ``ArticleEmbeddings`` (the packaged,
offline MiniLM model) and ``answer_chain()`` (question -> cited ``Answer`` as an LCEL Runnable).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict, PrivateAttr

from rag.settings import Settings, get_settings
from rag.types import Answer

ChainInput = str | dict[str, Any]


def _pipeline_for(settings: Settings | None) -> Any:
    """The shared pipeline for default settings, a private one for explicit settings."""
    import rag
    from rag.pipeline import Pipeline

    return rag.get_pipeline() if settings is None else Pipeline(settings)


class ArticleRetriever(BaseRetriever):
    """Passages from the indexed articles, best first; metadata carries the citation offsets."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int = 5
    settings: Settings | None = None
    _pipeline: Any = PrivateAttr(default=None)

    def _get_pipeline(self) -> Any:
        if self._pipeline is None:
            self._pipeline = _pipeline_for(self.settings)
        return self._pipeline

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        pipeline = self._get_pipeline()
        pipeline.ensure_ready()
        limit = k if k is not None else self.k
        candidates = pipeline.retriever.search(pipeline.validate(query), limit)
        articles = pipeline.index.articles
        return [
            Document(
                page_content=c.chunk.text,
                metadata={
                    "article_id": c.chunk.article_id,
                    "title": articles[c.chunk.article_id].title,
                    "start": c.chunk.start,
                    "end": c.chunk.end,
                    "score": c.fused,
                },
            )
            for c in candidates
        ]


class ArticleEmbeddings(Embeddings):
    """The packaged sentence-transformers model (normalised vectors, CPU, no network)."""

    def __init__(self, model: str | None = None, batch_size: int | None = None) -> None:
        from rag.embeddings import Embedder

        settings = get_settings()
        overrides = {"embedding_model": model, "embedding_batch_size": batch_size}
        self._embedder = Embedder.from_settings(
            settings.updated(**{k: v for k, v in overrides.items() if v is not None})
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self._embedder.embed(list(texts)).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        vector: list[float] = self._embedder.embed_query(text).tolist()
        return vector

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        import asyncio

        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        import asyncio

        return await asyncio.to_thread(self.embed_query, text)


class AnswerChain(Runnable[ChainInput, Answer]):
    """A question (or ``{"question": …, "history": […]}``) in, a cited ``Answer`` out."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._pipeline = _pipeline_for(settings)

    @staticmethod
    def _parse(value: ChainInput) -> tuple[str, Sequence[dict[str, Any]] | None]:
        if isinstance(value, str):
            return value, None
        return str(value["question"]), value.get("history")

    def _answer(self, value: ChainInput) -> Answer:
        question, history = self._parse(value)
        answer: Answer = self._pipeline.query(question, history)
        return answer

    def invoke(self, input: ChainInput, config: RunnableConfig | None = None, **kwargs: Any) -> Answer:
        """Runs with callbacks and tracing like any LangChain runnable."""
        return self._call_with_config(self._answer, input, config)

    def stream(  # type: ignore[override]
        self,
        input: ChainInput,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> Iterator[str | Answer]:
        """The answer text as the generator writes it, then the final, checked ``Answer``."""
        question, history = self._parse(input)
        yield from self._pipeline.stream(question, history)


def answer_chain(settings: Settings | None = None) -> AnswerChain:
    return AnswerChain(settings)
