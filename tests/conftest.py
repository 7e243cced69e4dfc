"""Shared fixtures: the real model, real Chroma indexes in temp folders, copies of the shipped corpus."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("RAG_PROGRESS", "false")
from rag import offline  # noqa: F401
from rag.pipeline import Pipeline
from rag.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_settings(tmp: Path, **overrides: object) -> Settings:
    return Settings(corpus_dir=tmp / "corpus", index_dir=tmp / "index", progress=False, **overrides)


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped corpus that a test may change."""
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target)
    return target


@pytest.fixture
def fresh_pipeline(tmp_path: Path, corpus_dir: Path) -> Pipeline:
    """A pipeline over a private corpus copy with an empty index."""
    return Pipeline(make_settings(tmp_path))


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """One pipeline with the shipped corpus indexed, shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp("shipped")
    shutil.copytree(CORPUS, tmp / "corpus")
    pipeline = Pipeline(make_settings(tmp))
    pipeline.ingest()
    return pipeline


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_app(corpus_dir: Path, index_dir: Path, port: int, **env_extra: str) -> Iterator[str]:
    """``rag serve`` as a user starts it, on a loopback port, over the given corpus and index."""
    env = {
        **os.environ,
        "RAG_INDEX_DIR": str(index_dir),
        "RAG_CORPUS_DIR": str(corpus_dir),
        "GRADIO_SERVER_PORT": str(port),
        **env_extra,
    }
    log_path = index_dir.parent / f"serve-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the app did not start:\n" + log_path.read_text()
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path, corpus_dir: Path) -> Iterator[str]:
    with running_app(corpus_dir, tmp_path / "index", free_loopback_port()) as url:
        yield url
