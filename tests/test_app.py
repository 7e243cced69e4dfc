"""The web chat, started as a user starts it (``rag serve``), asked through its HTTP API."""

from __future__ import annotations

import httpx
from gradio_client import Client


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
