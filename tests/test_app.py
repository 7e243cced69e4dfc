"""The web chat, started as a user starts it (``rag serve``), asked through its HTTP API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from evals.serving import free_loopback_port, running_app
from rag.pipeline import Pipeline


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


def test_login_is_required_when_configured(tmp_path: Path, corpus_dir: Path) -> None:
    with running_app(corpus_dir, tmp_path / "index", RAG_AUTH="reader:s3cret") as url:
        with pytest.raises(Exception):  # noqa: B017  (gradio_client raises its own auth errors)
            Client(url, verbose=False).predict("Who offered to host the talks?", None, api_name="/ask")
        client = Client(url, auth=("reader", "s3cret"), verbose=False)
        assert client.predict("How far is the Belarusian border from Kyiv?", None, api_name="/ask")["found"]


def test_the_app_runs_in_process_with_outbound_connections_blocked(shipped: Pipeline) -> None:
    """The same app inside the test process, where pytest-socket lets only loopback through: Gradio's
    start-up, the page and a question all work without touching any other address."""
    import app
    import rag

    rag.configure(shipped.settings)
    demo = app.build_app()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=free_loopback_port(), prevent_thread_lock=True, share=False
    )
    try:
        assert httpx.get(demo.local_url, timeout=10).status_code == 200
        answer = Client(demo.local_url, verbose=False).predict(
            "How far is the Belarusian border from Kyiv?", None, api_name="/ask"
        )
        assert answer["found"]
    finally:
        demo.close()
        rag.configure()  # back to the settings from the environment
