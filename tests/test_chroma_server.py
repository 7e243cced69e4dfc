"""Client/server mode: the same pipeline against a real Chroma server on loopback, across a restart."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evals.serving import free_loopback_port, process_serving
from rag.errors import RagIndexError
from rag.pipeline import Pipeline
from tests.conftest import CORPUS, make_settings

CHROMA = Path(sys.executable).with_name("chroma")


@contextmanager
def chroma_server(data: Path, port: int) -> Iterator[str]:
    command = [str(CHROMA), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with process_serving(
        command, f"{url}/api/v2/heartbeat", data.parent / f"chroma-{port}.log", timeout_s=60
    ):
        yield url


def test_ingest_and_answer_through_a_chroma_server_across_a_restart(tmp_path: Path) -> None:
    shutil.copytree(CORPUS, tmp_path / "corpus")
    port = free_loopback_port()
    with chroma_server(tmp_path / "chroma-data", port) as url:
        settings = make_settings(tmp_path, chroma_url=url)
        pipeline = Pipeline(settings)
        assert len(pipeline.ingest().added) == 5
        assert not (tmp_path / "index" / "chroma").exists()  # vectors live in the server
        first = pipeline.query("How far is the Belarusian border from Kyiv?")
        assert first.found and "200 kilometres" in first.text
    with chroma_server(tmp_path / "chroma-data", port):
        reopened = Pipeline(settings)
        again = reopened.query("How far is the Belarusian border from Kyiv?")
        assert again.text == first.text and again.citations == first.citations
        assert reopened.index.is_consistent()
        assert not reopened.ingest().changed


def test_an_unreachable_server_names_the_fix(tmp_path: Path) -> None:
    shutil.copytree(CORPUS, tmp_path / "corpus")
    settings = make_settings(tmp_path, chroma_url=f"http://127.0.0.1:{free_loopback_port()}")
    with pytest.raises(RagIndexError, match="make chroma"):
        Pipeline(settings).ingest()
