"""LLM generators against a real OpenAI-compatible (and Ollama) HTTP server on loopback, with scripted
replies: the real pipeline, index and LangChain clients; only the model's words are scripted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from evals.serving import free_loopback_port
from rag.errors import GeneratorConfigError
from rag.generate import available_generators
from rag.grounding import split_claims
from rag.pipeline import Pipeline
from rag.types import Answer
from tests.llm_server import ScriptedLLM, passage_number, scripted_llm
from tests.test_query import assert_citations_verbatim

QUESTION = "How far is the Belarusian border from Kyiv?"
FACT = "200 kilometres"


def cite_fact(messages: list[dict[str, Any]]) -> str:
    n = passage_number(messages, FACT)
    return f"The Belarusian frontier is only 200 kilometres from Kyiv [{n}]."


def llm_pipeline(shipped: Pipeline, llm_url: str, generator: str = "openai", **overrides: Any) -> Pipeline:
    """A pipeline over the shared index that answers through the given server."""
    base_url = f"{llm_url}/v1" if generator == "openai" else llm_url
    settings = shipped.settings.updated(
        **{"generator": generator, "llm_base_url": base_url, "llm_model": "scripted", **overrides}
    )
    return Pipeline(settings)


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    """A server whose replies each test sets through ``llm.script``."""
    with scripted_llm(cite_fact) as server:
        yield server


@pytest.mark.parametrize("generator", ["openai", "ollama"])
def test_a_valid_citation_is_kept_as_a_verbatim_quote(shipped: Pipeline, llm: ScriptedLLM, generator: str):
    answer = llm_pipeline(shipped, llm.url, generator).query(QUESTION)
    assert answer.generator == generator and answer.found
    assert answer.text == "The Belarusian frontier is only 200 kilometres from Kyiv [1]."
    assert len(answer.citations) == 1 and FACT in answer.citations[0].quote
    assert answer.notice is None and answer.uncited == []
    assert_citations_verbatim(shipped, answer)
    prompt = llm.requests[-1]["messages"][-1]["content"]
    assert "[1] (" in prompt and "[5] (" in prompt and QUESTION in prompt


def test_a_citation_to_a_passage_that_does_not_exist_is_removed(shipped: Pipeline, llm: ScriptedLLM):
    llm.script = lambda m: cite_fact(m).replace("].", "][9].")
    answer = llm_pipeline(shipped, llm.url).query(QUESTION)
    assert answer.generator == "openai"
    assert "[9]" not in answer.text and "[1]" in answer.text
    assert [c.n for c in answer.citations] == [1]
    assert "1 citation(s) that no passage supports were removed" in (answer.notice or "")
    assert_citations_verbatim(shipped, answer)


def test_a_citation_to_a_passage_that_says_something_else_is_removed(shipped: Pipeline, llm: ScriptedLLM):
    def script(messages: list[dict[str, Any]]) -> str:
        n = passage_number(messages, FACT)
        return f"{cite_fact(messages)} Bananas are the most popular fruit in Norway [{n}]."

    llm.script = script
    answer = llm_pipeline(shipped, llm.url).query(QUESTION)
    assert answer.uncited == ["Bananas are the most popular fruit in Norway."]
    assert "Bananas are the most popular fruit in Norway." in answer.text  # flagged, not hidden
    assert answer.text.count("[") == 1


def test_an_uncited_sentence_is_flagged_or_dropped(shipped: Pipeline, llm: ScriptedLLM):
    llm.script = lambda m: cite_fact(m) + " The talks will certainly succeed next week."
    flagged = llm_pipeline(shipped, llm.url).query(QUESTION)
    assert flagged.uncited == ["The talks will certainly succeed next week."]
    assert flagged.text.endswith("The talks will certainly succeed next week.")
    assert "flagged" in (flagged.notice or "")
    dropped = llm_pipeline(shipped, llm.url, llm_uncited="drop").query(QUESTION)
    assert "succeed" not in dropped.text and dropped.uncited == []
    assert dropped.text == "The Belarusian frontier is only 200 kilometres from Kyiv [1]."


def test_a_reply_with_no_supported_citation_falls_back_to_the_extractive_answer(
    shipped: Pipeline, llm: ScriptedLLM
):
    llm.script = lambda m: "Minsk has the best opera house in Europe [2]. It opened in 1933 [7]."
    answer = llm_pipeline(shipped, llm.url).query(QUESTION)
    assert answer.generator == "extractive" and answer.found
    assert "cited no passage that supports it" in (answer.notice or "")
    assert FACT in answer.text
    assert_citations_verbatim(shipped, answer)


def test_the_model_saying_the_passages_do_not_answer_is_an_abstention(shipped: Pipeline, llm: ScriptedLLM):
    llm.script = lambda m: "NOT FOUND"
    answer = llm_pipeline(shipped, llm.url).query(QUESTION)
    assert not answer.found and answer.citations == [] and answer.generator == "openai"


def test_an_unanswerable_question_never_reaches_the_model(shipped: Pipeline, llm: ScriptedLLM):
    answer = llm_pipeline(shipped, llm.url).query("What is a good recipe for banana bread?")
    assert not answer.found and llm.requests == []


def test_a_slow_server_times_out_to_the_extractive_answer(shipped: Pipeline):
    with scripted_llm(cite_fact, first_byte_delay_s=30) as llm:
        started = time.monotonic()
        answer = llm_pipeline(shipped, llm.url, llm_timeout_s=1).query(QUESTION)
        waited = time.monotonic() - started
    assert waited < 20, "the 1 s timeout did not stop the wait for a 30 s reply"
    assert answer.generator == "extractive" and answer.found and FACT in answer.text
    assert "did not answer within 1 s" in (answer.notice or "")


def test_a_reply_that_trickles_past_the_deadline_is_cut_off(shipped: Pipeline):
    with scripted_llm(lambda m: "word " * 200, token_delay_s=0.05) as llm:
        answer = llm_pipeline(shipped, llm.url, llm_timeout_s=1).query(QUESTION)
    assert answer.generator == "extractive" and "did not answer within 1 s" in (answer.notice or "")


def test_connection_refused_is_explained_and_answered_extractively(shipped: Pipeline):
    url = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    answer = llm_pipeline(shipped, url).query(QUESTION)
    assert answer.generator == "extractive" and answer.found
    assert "could not be reached" in (answer.notice or "") and url in (answer.notice or "")


def test_tokens_stream_through_rag_query_and_rag_stream(shipped: Pipeline):
    with scripted_llm(cite_fact, token_delay_s=0.1) as llm:
        pipeline = llm_pipeline(shipped, llm.url)
        arrivals: list[tuple[float, str]] = []
        answer = pipeline.query(QUESTION, on_token=lambda t: arrivals.append((time.monotonic(), t)))
        pieces = list(pipeline.stream(QUESTION))
    assert len(arrivals) == len(cite_fact(llm.requests[0]["messages"]).split())
    assert arrivals[-1][0] - arrivals[0][0] > 0.5  # they came as written, not all at the end
    assert "".join(t for _, t in arrivals) == answer.text
    assert all(isinstance(p, str) for p in pieces[:-1]) and isinstance(pieces[-1], Answer)
    assert pieces[-1].text == answer.text


def test_a_follow_up_is_condensed_by_the_model(shipped: Pipeline, llm: ScriptedLLM):
    standalone = "What did Serbia's foreign minister say about the protests?"

    def script(messages: list[dict[str, Any]]) -> str:
        if "Rewrite" in messages[0]["content"]:
            return standalone
        n = passage_number(messages, "protest")
        return f"The minister spoke about the protests in Serbia [{n}]."

    llm.script = script
    history = [
        {"role": "user", "content": "Who is Serbia's foreign minister?"},
        {"role": "assistant", "content": "Marko Djuric [1]"},
    ]
    answer = llm_pipeline(shipped, llm.url).query("What did he say about the protests?", history)
    assert answer.search_query == standalone
    assert "Who is Serbia's foreign minister?" in llm.requests[0]["messages"][-1]["content"]
    assert answer.citations and answer.citations[0].article_id.startswith("001")
    assert_citations_verbatim(shipped, answer)


def test_generator_settings_errors_are_clear(shipped: Pipeline):
    with pytest.raises(GeneratorConfigError, match="Available: extractive, openai, ollama"):
        Pipeline(shipped.settings.updated(generator="gpt-magic"))
    with pytest.raises(GeneratorConfigError, match="RAG_LLM_MODEL"):
        Pipeline(shipped.settings.updated(generator="openai", llm_model=None))
    assert set(available_generators()) >= {"extractive", "openai", "ollama"}


def test_generator_env_vars_are_the_documented_contract(monkeypatch: pytest.MonkeyPatch):
    from rag.settings import Settings

    for key, value in {
        "RAG_GENERATOR": "ollama",
        "RAG_LLM_BASE_URL": "http://127.0.0.1:11434",
        "RAG_LLM_MODEL": "qwen",
        "RAG_LLM_API_KEY": "sk-test",
        "RAG_LLM_TIMEOUT_S": "7.5",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert (settings.generator, settings.llm_base_url, settings.llm_model) == (
        "ollama",
        "http://127.0.0.1:11434",
        "qwen",
    )
    assert settings.llm_api_key is not None and settings.llm_api_key.get_secret_value() == "sk-test"
    assert settings.llm_timeout_s == 7.5


def test_markers_are_read_however_the_model_places_them():
    claims = split_claims("Mr. Vucic said Belgrade is ready [1]. Minsk is close. [2] Both agreed [1, 3][4].")
    assert [(c.text, c.cited) for c in claims] == [
        ("Mr. Vucic said Belgrade is ready.", [1]),
        ("Minsk is close.", [2]),
        ("Both agreed.", [1, 3, 4]),
    ]


def test_a_failure_is_described_by_its_class_not_its_name(shipped: Pipeline) -> None:
    import httpx

    from rag.llm import OpenAIGenerator

    generator = OpenAIGenerator(shipped.settings.updated(generator="openai", llm_model="m"))

    class ConnectorConfigError(Exception):  # "connect" in the name, but nothing about reaching a server
        pass

    class TimeoutPolicyError(Exception):
        pass

    assert "failed: ConnectorConfigError" in generator.describe(ConnectorConfigError("bad option"))
    assert "failed: TimeoutPolicyError" in generator.describe(TimeoutPolicyError("bad option"))
    assert "could not be reached" in generator.describe(httpx.ConnectError("refused"))
    assert "did not answer within" in generator.describe(httpx.ReadTimeout("slow"))
