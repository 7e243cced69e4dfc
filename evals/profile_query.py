"""Where a query's time goes, stage by stage, on a corpus of long articles (default: wiki-squad2).

    .venv/bin/python -m evals.profile_query                       # wiki-squad2, every question once
    .venv/bin/python -m evals.profile_query --set my=q.jsonl:docs/ --limit 200

The corpus is indexed in a temporary folder; each question is asked once (so nothing comes from the
embedding cache that a reader's first question would not get) with a timer around each stage, and
again under cProfile for the functions that cost most. Stages are timed exclusively: a stage's time
excludes the stages it calls (fusion's time does not include the dense search it starts).

The stage timers wrap methods of the pipeline's own objects by name. They follow the query path as it
is today (`rag/retrieve.py`, `rag/answer.py`); a stage that no longer exists is reported as missing
rather than failing the run.
"""

from __future__ import annotations

import cProfile
import functools
import io
import pstats
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from evals.sets import QuestionSet, default_sets, load_questions, parse_set_spec
from rag.pipeline import Pipeline
from rag.settings import Settings

# (label, path from the pipeline to the object, method name)
STAGES = [
    ("question embedding", "embedder", "embed_query"),
    ("dense search (Chroma)", "index", "dense_search"),
    ("BM25 search", "retriever", "sparse_search"),
    ("BM25 term coverage", "retriever", "coverage"),
    ("fusion + dedup + MMR", "retriever", "search"),
    ("chunk vectors for MMR", "index", "chunk_vectors"),
    ("candidate sentences", "answerer", "candidate_sentences"),
    ("sentence vectors lookup", "index", "sentence_vectors"),
    ("sentence scoring", "answerer", "score"),
    ("re-embedding leaders", "embedder", "embed_cached"),
    ("quote shaping (cite)", "answerer", "cite"),
    ("confidence", "answerer", "confidence"),
]


class StageTimer:
    """Exclusive time per stage: a wrapped call's time, less the wrapped calls made inside it."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # [label, started, time spent in wrapped children]
        self.per_query: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def wrap(self, label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            # The question's vector is looked up again by the scorer: that is a cache hit, and the
            # cache lookup inside embed_query is the question's embedding, not re-embedding.
            if label == "re-embedding leaders" and self.stack and self.stack[-1][0] != "sentence scoring":
                return method(*args, **kwargs)
            self.stack.append([label, time.perf_counter(), 0.0])
            try:
                return method(*args, **kwargs)
            finally:
                _, started, children = self.stack.pop()
                spent = time.perf_counter() - started
                self.per_query[label] += spent - children
                if self.stack:
                    self.stack[-1][2] += spent

        return timed

    def end_query(self, total: float) -> None:
        for label, _, _ in STAGES:
            self.samples[label].append(self.per_query.get(label, 0.0))
        self.samples["(total)"].append(total)
        self.samples["(other: follow-up, validation, passages, Answer)"].append(
            total - sum(self.per_query.values())
        )
        self.per_query = defaultdict(float)


def instrument(pipeline: Pipeline, timer: StageTimer) -> list[str]:
    missing = []
    for label, owner, name in STAGES:
        target = getattr(pipeline, owner, None)
        method = getattr(target, name, None) if target is not None else None
        if method is None:
            missing.append(label)
            continue
        setattr(target, name, timer.wrap(label, method))
    return missing


def main(
    set_spec: Annotated[str | None, typer.Option("--set", help="NAME=QUESTIONS:CORPUS")] = None,
    limit: Annotated[int, typer.Option(help="questions to time (0: all)")] = 0,
    top: Annotated[int, typer.Option(help="functions listed from cProfile")] = 25,
) -> None:
    if set_spec:
        qset = parse_set_spec(set_spec)
    else:
        found = [s for s in default_sets()[0] if s.name == "wiki-squad2"]
        if not found:
            raise typer.BadParameter("wiki-squad2 is absent; give --set NAME=QUESTIONS:CORPUS")
        qset = found[0]
    profile_set(qset, limit, top)


def profile_set(qset: QuestionSet, limit: int, top: int) -> None:
    questions = [q["question"] for q in load_questions(qset.questions)]
    questions = list(dict.fromkeys(questions))[: limit or None]
    work = Path(tempfile.mkdtemp(prefix="rag-profile-"))
    try:
        settings = Settings(corpus_dir=qset.corpus, index_dir=work / "index", progress=False)
        pipeline = Pipeline(settings)
        report = pipeline.ingest()
        chunks = sum(len(a.chunks) for a in pipeline.articles())
        sentences = sum(len(a.sentences) for a in pipeline.articles())
        print(
            f"{qset.name}: {len(pipeline.articles())} articles, {chunks} chunks, {sentences} sentences "
            f"(ingest {report.seconds:.1f} s); {len(questions)} questions, backend "
            f"{settings.embedding_backend}"
        )
        pipeline.query("warm-up question")
        timer = StageTimer()
        missing = instrument(pipeline, timer)
        for question in questions:
            started = time.perf_counter()
            pipeline.query(question)
            timer.end_query(time.perf_counter() - started)
        print_stages(timer, missing)
        # The same questions again under cProfile, in a fresh pipeline (an empty embedding cache).
        fresh = Pipeline(settings)
        fresh.query("warm-up question")
        profiler = cProfile.Profile()
        profiler.enable()
        for question in questions:
            fresh.query(question)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\ncProfile, by own time, {len(questions)} queries:\n{out.getvalue()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_stages(timer: StageTimer, missing: list[str]) -> None:
    total = statistics.fmean(timer.samples["(total)"])
    print(f"\n{'stage':<52}{'mean ms':>9}{'p50 ms':>9}{'p95 ms':>9}{'share':>8}")
    labels = [label for label, _, _ in STAGES if label not in missing]
    labels += ["(other: follow-up, validation, passages, Answer)", "(total)"]
    for label in labels:
        values = sorted(timer.samples[label])
        mean = statistics.fmean(values)
        p50 = values[len(values) // 2]
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(f"{label:<52}{mean * 1000:>9.2f}{p50 * 1000:>9.2f}{p95 * 1000:>9.2f}{mean / total:>8.1%}")
    for label in missing:
        print(f"{label:<52}{'(not on the query path any more)':>35}")


if __name__ == "__main__":
    typer.run(main)
