"""The LangChain tutorial pipeline, as the peer we measure against.

RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200), the same MiniLM embeddings, a Chroma
store, similarity search with k=4; its answer is the top chunk. It reads the same cleaned article texts
as our pipeline, so the comparison isolates retrieval and answering, not cleaning.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rag import offline  # noqa: F401
from rag.embeddings import resolve_model_path
from rag.types import IndexedArticle


class TutorialBaseline:
    def __init__(self, articles: list[IndexedArticle], model: str, workdir: Path) -> None:
        from langchain_chroma import Chroma
        from langchain_core.documents import Document
        from langchain_huggingface import HuggingFaceEmbeddings
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.texts = {a.id: a.text for a in articles}
        embeddings = HuggingFaceEmbeddings(
            model_name=str(resolve_model_path(model)), model_kwargs={"device": "cpu"}
        )
        splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200, add_start_index=True)
        docs = splitter.split_documents(
            [Document(page_content=a.text, metadata={"article_id": a.id}) for a in articles]
        )
        started = time.perf_counter()
        self.store = Chroma.from_documents(
            docs, embeddings, collection_name="baseline", persist_directory=str(workdir)
        )
        self.ingest_seconds = time.perf_counter() - started
        self.chunks = len(docs)

    def query(self, question: str) -> dict[str, Any]:
        docs = self.store.similarity_search(question, k=4)
        top = docs[0] if docs else None
        invalid = 0
        if top is not None:
            start = int(top.metadata["start_index"])
            text = self.texts[top.metadata["article_id"]]
            invalid = int(text[start : start + len(top.page_content)] != top.page_content)
        locations = [
            (
                d.metadata["article_id"],
                int(d.metadata["start_index"]),
                int(d.metadata["start_index"]) + len(d.page_content),
            )
            for d in docs
        ]
        return {
            "text": top.page_content if top else "",
            "passages": [d.page_content for d in docs],
            "passage_locations": locations,
            "quotes": [top.page_content] if top else [],
            "quote_locations": locations[:1],
            "invalid": invalid,
        }
