"""`make load`: 20 concurrent chat sessions of 10 questions each (with follow-ups) against the web app.

Starts `rag serve` on a free loopback port over a temporary copy of the index (or uses --url, which
must be a loopback address), checks every answer's citations against the articles, and prints errors,
invalid citations and p50/p95 latency. Requests are bounded in number and time and go only to 127.0.0.1.

``--during-ingest N`` runs ``rag ingest`` of N synthetic articles into the same index while the sessions
ask, and ``--during-upload N`` uploads them through the app's Library endpoint: no question may fail
because an ingest is running.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer

from evals.run import HERE, load_questions
from evals.serving import running_app
from rag.pipeline import Pipeline
from rag.settings import Settings

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def session_questions(
    questions: list[dict[str, Any]], session: int, per_session: int
) -> list[dict[str, Any]]:
    """A deterministic slice of the set, follow-ups placed right after the question they follow."""
    by_id = {q["id"]: q for q in questions}
    plain = [q for q in questions if not q.get("previous")]
    follow_ups = {q["previous"]: q for q in questions if q.get("previous")}
    picked: list[dict[str, Any]] = []
    i = session * 7
    while len(picked) < per_session:
        q = plain[i % len(plain)]
        picked.append(q)
        if q["id"] in follow_ups and len(picked) < per_session:
            picked.append(by_id[follow_ups[q["id"]]["id"]])
        i += 1
    return picked


def run_session(url: str, questions: list[dict[str, Any]], pipeline: Pipeline) -> dict[str, Any]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    history: list[dict[str, str]] = []
    latencies, errors, invalid = [], [], 0
    for q in questions:
        turn_history = history[-2:] if q.get("previous") else None
        started = time.perf_counter()
        try:
            result = client.predict(q["question"], turn_history, api_name="/ask")
        except Exception as exc:  # a load test counts every failure, whatever it is
            errors.append(f"{q['id']}: {exc}")
            continue
        latencies.append(time.perf_counter() - started)
        if "error" in result:
            errors.append(f"{q['id']}: {result['error']}")
            continue
        for c in result["citations"]:
            invalid += pipeline.article(c["article_id"]).text[c["start"] : c["end"]] != c["quote"]
        history = [
            {"role": "user", "content": q["question"]},
            {"role": "assistant", "content": result["text"]},
        ]
    return {"latencies": latencies, "errors": errors, "invalid": invalid}


def start_cli_ingest(folder: Path, corpus: Path, index: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAG_CORPUS_DIR": str(corpus), "RAG_INDEX_DIR": str(index), "RAG_PROGRESS": "false"}
    return subprocess.Popen([sys.executable, "-m", "rag", "ingest", str(folder)], env=env)


def upload_files(url: str, files: list[Path]) -> str:
    """The Library tab's upload, through the app's HTTP API (what the browser calls)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    status, _ = client.predict([handle_file(str(f)) for f in files], api_name="/upload")
    return str(status)


def main(
    url: Annotated[str | None, typer.Option(help="A running app on 127.0.0.1 (default: start one)")] = None,
    sessions: int = 20,
    per_session: int = 10,
    during_ingest: Annotated[int, typer.Option(help="Articles a CLI ingest adds meanwhile")] = 0,
    during_upload: Annotated[int, typer.Option(help="Articles uploaded through the app meanwhile")] = 0,
) -> None:
    if url and urlparse(url).hostname not in _LOOPBACK:
        raise typer.BadParameter("the load test only targets 127.0.0.1 / localhost")
    if url and (during_ingest or during_upload):
        raise typer.BadParameter("--during-ingest and --during-upload start their own app: leave out --url")
    from evals.synth import write_distractor_corpus

    questions = load_questions(HERE / "questions.jsonl")
    work = Path(tempfile.mkdtemp(prefix="rag-load-"))
    try:
        corpus, index = work / "corpus", work / "index"
        shutil.copytree(HERE.parent / "corpus", corpus)
        pipeline = Pipeline(Settings(corpus_dir=corpus, index_dir=index, progress=False))
        pipeline.ingest()
        batch = write_distractor_corpus(HERE.parent / "corpus", work / "batch", during_ingest + during_upload)
        with running_app(corpus, index) if url is None else nullcontext(url) as target:
            started = time.perf_counter()
            writer = start_cli_ingest(work / "batch", corpus, index) if during_ingest else None
            with ThreadPoolExecutor(max_workers=sessions + 1) as pool:
                uploaded = pool.submit(upload_files, target, batch[during_ingest:]) if during_upload else None
                plans = [session_questions(questions, s, per_session) for s in range(sessions)]
                results = list(pool.map(lambda plan: run_session(target, plan, pipeline), plans))
                wall = time.perf_counter() - started
                if uploaded is not None:
                    print("upload:", uploaded.result().replace("<br>", " | ")[:300])
            if writer is not None:
                print("CLI ingest exit code:", writer.wait(timeout=3600))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = [e for r in results for e in r["errors"]]
    total = sessions * per_session
    print(
        f"{sessions} sessions x {per_session} questions = {total} requests in {wall:.1f} s "
        f"({total / wall:.1f} req/s)"
    )
    print(f"errors: {len(errors)}; invalid citations: {sum(r['invalid'] for r in results)}")
    if latencies:
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(
            f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
            f"(includes queueing behind {sessions} concurrent sessions)"
        )
    for error in errors[:10]:
        print("  ", error)
    if errors:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
