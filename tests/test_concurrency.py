"""Several processes on one index: readers never fail during an ingest, see every commit within 2 s, and
no interleaving loses or duplicates an article. Real processes, the real model, real Chroma."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evals.synth import write_distractor_corpus
from rag.pipeline import Pipeline
from tests.conftest import CORPUS, make_settings
from tests.test_chroma_server import chroma_server
from tests.test_cli import rag

STEADY_QUESTION = "How far is the Belarusian border from Kyiv?"
STEADY_FACT = "200 kilometres"
NEW_ARTICLE = (
    "Arctic forum sets a date\n\n"
    "Officials in Tromsø said on Friday that the Arctic Forum will convene on 14 May. "
    "The organisers expect 312 delegates from eleven countries to attend the opening session.\n"
)
NEW_QUESTION = "How many delegates do the organisers of the Arctic Forum expect?"
NEW_FACT = "312 delegates"

# A reader process: asks both questions in turn every 200 ms until told to stop, and logs every answer
# (or error) with the wall-clock time, one JSON line each.
ASKER = """
import json, sys, time, traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from rag.pipeline import Pipeline
from rag.settings import Settings

log, stop = Path(sys.argv[1]), Path(sys.argv[2])
pipeline = Pipeline(Settings())
pipeline.ensure_ready()
with log.open("a") as out:
    print(json.dumps({"ready": time.time()}), file=out, flush=True)
    while not stop.exists():
        for question in sys.argv[3:]:
            entry = {"question": question, "t": time.time()}
            try:
                answer = pipeline.query(question)
                entry.update(text=answer.text, found=answer.found,
                             cited=[c.article_id for c in answer.citations])
            except Exception:
                entry["error"] = traceback.format_exc()
            print(json.dumps(entry), file=out, flush=True)
        time.sleep(0.2)
"""


def env_for(corpus: Path, index: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RAG_CORPUS_DIR": str(corpus),
        "RAG_INDEX_DIR": str(index),
        "RAG_PROGRESS": "false",
        **extra,
    }


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_readers_keep_answering_while_two_other_processes_ingest(tmp_path: Path) -> None:
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    shutil.copytree(CORPUS, corpus)
    env = env_for(corpus, index)
    assert rag("ingest", env=env).returncode == 0
    batch = tmp_path / "batch"
    write_distractor_corpus(CORPUS, batch, 150)
    newcomer = tmp_path / "late" / "arctic-forum.txt"
    newcomer.parent.mkdir()
    newcomer.write_text(NEW_ARTICLE, encoding="utf-8")

    log, stop = tmp_path / "asker.jsonl", tmp_path / "stop"
    asker = subprocess.Popen(
        [sys.executable, "-c", ASKER, str(log), str(stop), STEADY_QUESTION, NEW_QUESTION],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: log.exists() and "ready" in log.read_text(), 120, "the reader to start")
        big = subprocess.Popen(
            [sys.executable, "-m", "rag", "ingest", str(batch)], env=env, stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)  # the second writer arrives while the first is embedding, and queues
        small = rag("ingest", str(newcomer), env=env)
        committed = time.time()
        assert small.returncode == 0, small.stdout + small.stderr
        assert big.wait(timeout=600) == 0
        time.sleep(3.0)
    finally:
        stop.touch()
        asker.wait(timeout=60)

    entries = [e for e in read_log(log) if "question" in e]
    errors = [e["error"] for e in entries if "error" in e]
    assert not errors, errors[0]
    steady = [e for e in entries if e["question"] == STEADY_QUESTION]
    assert len(steady) > 10
    assert all(STEADY_FACT in str(e["text"]) for e in steady), [
        e["text"] for e in steady if STEADY_FACT not in str(e["text"])
    ]
    newly = [e for e in entries if e["question"] == NEW_QUESTION and NEW_FACT in str(e["text"])]
    assert newly, "the reader never answered from the article another process added"
    assert newly[0]["t"] - committed < 2.0
    assert all("arctic-forum" in e["cited"] for e in newly)

    pipeline = Pipeline(make_settings(tmp_path))
    assert pipeline.index.check() == []
    assert len(pipeline.index.store.catalog()) == 5 + 150 + 1  # every file once


def test_two_app_processes_share_one_chroma_server_and_nothing_else(tmp_path: Path) -> None:
    """Different index folders, one `chroma run`: each answers about what the other ingested."""
    first_corpus, second_corpus = tmp_path / "first" / "corpus", tmp_path / "second" / "corpus"
    shutil.copytree(CORPUS, first_corpus)
    second_corpus.mkdir(parents=True)
    (second_corpus / "arctic-forum.txt").write_text(NEW_ARTICLE, encoding="utf-8")
    from evals.serving import free_loopback_port

    with chroma_server(tmp_path / "chroma-data", free_loopback_port()) as url:
        first = Pipeline(make_settings(tmp_path / "first", chroma_url=url))
        assert len(first.ingest().added) == 5
        second_env = env_for(second_corpus, tmp_path / "second" / "index", RAG_CHROMA_URL=url)
        ingested = rag("ingest", env=second_env)
        assert ingested.returncode == 0 and "added 1" in ingested.stdout, ingested.stdout + ingested.stderr

        asked = rag("ask", "--json", STEADY_QUESTION, env=second_env)
        assert asked.returncode == 0, asked.stderr
        answer = json.loads(asked.stdout)
        assert STEADY_FACT in answer["text"]
        assert {c["article_id"] for c in answer["citations"]} <= set(first.index.store.catalog())

        time.sleep(first.settings.refresh_interval_s)
        theirs = first.query(NEW_QUESTION)
        assert NEW_FACT in theirs.text and theirs.citations[0].article_id == "arctic-forum"
        assert first.index.check() == []
        assert len(first.index.store.catalog()) == 6
        # Nothing but the server is shared: the second folder holds only its own caches.
        assert not (tmp_path / "second" / "index" / "articles.db").exists()
        assert not (tmp_path / "first" / "index" / "chroma").exists()


def serve(corpus: Path, index: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`rag serve` on a free loopback port, as a handle this test may kill."""
    import httpx

    from evals.serving import free_loopback_port

    port = free_loopback_port()
    env = env_for(corpus, index, GRADIO_SERVER_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 180, "rag serve to start")
    return proc, url


def test_a_server_killed_during_an_upload_is_repaired_and_readers_never_notice(tmp_path: Path) -> None:
    """SIGKILL of the app while it indexes an upload, at two moments (as its ingest starts, and once it
    has written some articles' vectors), with a reader process asking throughout: the reader never
    fails, and the next start indexes every uploaded file exactly once."""
    import threading

    from gradio_client import Client, handle_file

    corpus, index = tmp_path / "corpus", tmp_path / "index"
    shutil.copytree(CORPUS, corpus)
    assert rag("ingest", env=env_for(corpus, index)).returncode == 0
    log, stop = tmp_path / "asker.jsonl", tmp_path / "stop"
    asker = subprocess.Popen(
        [sys.executable, "-c", ASKER, str(log), str(stop), STEADY_QUESTION], env=env_for(corpus, index)
    )
    uploaded: list[Path] = []
    try:
        wait_for(lambda: log.exists() and "ready" in log.read_text(), 120, "the reader to start")
        vectors = index / "vectors"
        for round_, written in enumerate((0, 10)):
            batch = write_distractor_corpus(CORPUS, tmp_path / f"upload-{round_}", 80, seed=round_ + 101)
            uploaded += batch
            proc, url = serve(corpus, index, tmp_path / f"serve-{round_}.log")
            client = Client(url, verbose=False)
            sender = threading.Thread(
                target=lambda c=client, b=batch: _ignore_errors(
                    lambda: c.predict([handle_file(str(f)) for f in b], api_name="/upload")
                ),
                daemon=True,
            )
            sender.start()
            marker = index / "ingest-in-progress.json"
            wait_for(marker.exists, 120, "the upload's ingest to start")
            target = len(list(vectors.glob("synthetic-*"))) + written
            while len(list(vectors.glob("synthetic-*"))) < target:  # this many articles' vectors written
                assert marker.exists(), "the ingest finished before it could be interrupted"
                time.sleep(0.05)
            proc.kill()
            proc.wait(timeout=30)
            sender.join(timeout=60)
            assert marker.exists(), "the ingest finished before it could be interrupted"
    finally:
        stop.touch()
        asker.wait(timeout=60)

    entries = [e for e in read_log(log) if "question" in e]
    assert entries and not [e for e in entries if "error" in e]
    assert all(STEADY_FACT in e["text"] for e in entries)

    pipeline = Pipeline(make_settings(tmp_path))
    assert STEADY_FACT in pipeline.query(STEADY_QUESTION).text  # the next use completes the ingests
    assert pipeline.index.interrupted is None
    assert pipeline.index.check() == []
    catalog = pipeline.index.store.catalog()
    assert len(catalog) == 5 + len(uploaded)
    assert {Path(e.source).name for e in catalog.values()} >= {f.name for f in uploaded}


def _ignore_errors(call: Callable[[], object]) -> None:
    """The upload's request dies with the server it was sent to; that is the point of the test."""
    with contextlib.suppress(Exception):
        call()
