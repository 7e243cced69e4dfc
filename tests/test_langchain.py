"""Our LangChain components against LangChain's own standard test suites, on the real model and index."""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from rag.lc import ArticleEmbeddings, ArticleRetriever, answer_chain
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.types import Answer
from tests.conftest import CORPUS, make_settings


@lru_cache(maxsize=1)
def indexed_settings() -> Settings:
    """The shipped corpus indexed once in a temp folder (the standard suites take no fixtures)."""
    tmp = Path(tempfile.mkdtemp(prefix="rag-lc-"))
    shutil.copytree(CORPUS, tmp / "corpus")
    settings = make_settings(tmp)
    Pipeline(settings).ingest()
    return settings


class TestArticleRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[ArticleRetriever]:
        return ArticleRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"settings": indexed_settings()}

    @property
    def retriever_query_example(self) -> str:
        return "Which city offered to host the peace talks?"


class TestArticleEmbeddingsStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[ArticleEmbeddings]:
        return ArticleEmbeddings


class TestArticleEmbeddingsUnitStandard(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[ArticleEmbeddings]:
        return ArticleEmbeddings


def test_retriever_documents_carry_verbatim_offsets() -> None:
    settings = indexed_settings()
    pipeline = Pipeline(settings)
    docs = ArticleRetriever(settings=settings, k=5).invoke("How far is Kyiv from the Belarusian border?")
    assert len(docs) == 5
    for doc in docs:
        meta = doc.metadata
        assert pipeline.article(meta["article_id"]).text[meta["start"] : meta["end"]] == doc.page_content
        assert meta["title"] and meta["score"] > 0


def test_retriever_composes_into_a_users_chain() -> None:
    retriever = ArticleRetriever(settings=indexed_settings(), k=2)

    def join(docs: list[Document]) -> str:
        return "\n".join(f"{d.metadata['title']}: {d.page_content}" for d in docs)

    chain = retriever | RunnableLambda(join) | StrOutputParser()
    assert "200 kilometres" in chain.invoke("How far is Kyiv from the Belarusian border?")


def assert_valid(answer: Answer, pipeline: Pipeline) -> None:
    assert isinstance(answer, Answer)
    for c in answer.citations:
        assert pipeline.article(c.article_id).text[c.start : c.end] == c.quote


def test_answer_chain_invoke_batch_and_stream() -> None:
    settings = indexed_settings()
    pipeline = Pipeline(settings)
    chain = answer_chain(settings)
    answer = chain.invoke("How far is Kyiv from the Belarusian border?")
    assert answer.found and "200 kilometres" in answer.text
    assert_valid(answer, pipeline)

    history = [
        {"role": "user", "content": "Who is Serbia's foreign minister?"},
        {"role": "assistant", "content": "Serbian Foreign Minister Marko Djuric [1]"},
    ]
    batch = chain.batch(
        [
            "Who is the Kremlin spokesman?",
            {"question": "What did he say about the protesters?", "history": history},
        ]
    )
    assert len(batch) == 2 and all(a.found for a in batch)
    for a in batch:
        assert_valid(a, pipeline)

    parts = list(chain.stream("How far is Kyiv from the Belarusian border?"))
    final = parts[-1]
    assert isinstance(final, Answer)
    assert all(isinstance(p, str) for p in parts[:-1]) and "".join(parts[:-1]) == final.text
    assert_valid(final, pipeline)
