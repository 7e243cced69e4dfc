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


def test_a_malformed_history_gets_one_clear_error_from_ask(server: str) -> None:
    client = Client(server, verbose=False)
    for history in ["a string", {"role": "user", "content": "hi"}, ["Who?", "Nobody."]]:
        result = client.predict("What did he say about the protesters?", history, api_name="/ask")
        assert "chat history must be a list of messages" in result["error"], history


def test_failed_logins_slow_down_that_client_only(tmp_path: Path, corpus_dir: Path) -> None:
    """Through the real HTTP login route: each failure doubles the next wait of the same client
    (RAG_LOGIN_DELAY_S, here 0.5 s), another address is not slowed, and the right password works."""
    import time

    secured = {"RAG_AUTH": "reader:s3cret", "RAG_LOGIN_DELAY_S": "0.5"}
    with running_app(corpus_dir, tmp_path / "index", **secured) as url:

        def login(password: str, source: str = "127.0.0.1") -> tuple[int, float]:
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport, timeout=60) as http:
                started = time.perf_counter()
                response = http.post(f"{url}login", data={"username": "reader", "password": password})
                return response.status_code, time.perf_counter() - started

        failures = [login("guess") for _ in range(4)]
        assert [status for status, _ in failures] == [400] * 4
        waits = [seconds for _, seconds in failures]
        assert waits[0] < 0.5 and waits[1] >= 0.5 and waits[2] >= 1.0 and waits[3] >= 2.0, waits
        other_status, other_wait = login("guess", source="127.0.0.2")  # another client: not slowed
        assert other_status == 400 and other_wait < 0.5
        status, wait = login("s3cret")
        assert status == 200 and wait >= 4.0  # the right password still works, after the wait
        status, wait = login("s3cret")
        assert status == 200 and wait < 0.5  # and a success clears the record
