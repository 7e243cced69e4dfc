"""Shared fixtures: the real model, real Chroma indexes in temp folders, copies of the shipped corpus."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port
