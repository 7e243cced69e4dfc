"""Shared fixtures: the real model, real Chroma indexes in temp folders, copies of the shipped corpus."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAG_PROGRESS", "false")
from evals.serving import running_app
from rag import offline  # noqa: F401
from rag.pipeline import Pipeline
from rag.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_settings(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"corpus_dir": tmp / "corpus", "index_dir": tmp / "index", "progress": False}
    return Settings(**{**values, **overrides})


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
def server(tmp_path: Path, corpus_dir: Path) -> Iterator[str]:
    with running_app(corpus_dir, tmp_path / "index") as url:
        yield url
