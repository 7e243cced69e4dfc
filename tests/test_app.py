"""The web chat, started as a user starts it (``rag serve``), asked through its HTTP API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client


@pytest.fixture
def server(tmp_path: Path, corpus_dir: Path, free_port: int) -> Iterator[str]:
    env = {
        **os.environ,
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus_dir),
        "GRADIO_SERVER_PORT": str(free_port),
    }
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{free_port}/"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_web_chat_answers_with_citations(server: str) -> None:
    page = httpx.get(server, timeout=10).text
    assert "News Q&amp;A" in page or "News Q&A" in page
    client = Client(server, verbose=False)
    result = client.predict("How far is the Belarusian border from Kyiv?", None, api_name="/ask")
    assert result["found"]
    assert "200 kilometres" in result["text"]
    citation = result["citations"][0]
    assert citation["quote"] in result["text"] and citation["end"] > citation["start"]
    refused = client.predict("", None, api_name="/ask")
    assert "Please ask a question" in refused["error"]
