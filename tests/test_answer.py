"""The answer step's pieces on tiny texts: answer typing, the sentence filter, quote shaping, the short
answer; then the fitted model end to end over the shipped corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.answer import NOT_FOUND, Evidence, ExtractiveAnswerer, has_kind, is_statement, quote, short_answer
from rag.answer_features import (
    EVIDENCE_FEATURES,
    LEADER_FEATURES,
    SENTENCE_FEATURES,
    Question,
    SentenceContext,
    expected_kind,
    question_entities,
    sentence_features,
)
from rag.answer_model import MODEL_FILE, load_model
from rag.chunking import sentence_spans
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.types import IndexedArticle, Span

TEXT = (
    "Talks offered\n"
    "Serbian Foreign Minister Marko Djuric stated that Belgrade is prepared to facilitate talks. "
    "The capital lies about 200 kilometres from the border. "
    "The meeting was held on 12 March 2025, officials said.\n"
    "Come."
)


def article(text: str = TEXT) -> IndexedArticle:
    return IndexedArticle(
        id="a",
        title="Talks offered",
        text=text,
        source="a.txt",
        content_hash="x",
        chunks=[(0, len(text))],
        sentences=[(s.start, s.end) for s in sentence_spans(text)],
    )


def test_fixture_spans_are_sentences() -> None:
    a = article()
    assert [a.text[s:e] for s, e in a.sentences][-1] == "Come."
    assert a.text[slice(*a.sentences[2])].startswith("The capital")


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many people attended the talks?", "number"),
        ("How far is Kyiv from the border?", "number"),
        ("When were the talks held?", "date"),
        ("In which year did the war begin?", "date"),
        ("Who offered to host the talks?", "person"),
        ("Where will the talks take place?", "place"),
        ("Which capital offered to host the talks?", "place"),
        ("Why are elite peace deals brittle?", None),
    ],
)
def test_expected_kind(question: str, kind: str | None) -> None:
    assert expected_kind(question) == kind


def test_question_entities_are_its_names_and_numbers() -> None:
    assert question_entities("Who is Ukraine's foreign minister?") == ["ukraine"]
    assert question_entities("What happened in Minsk in 2014?") == ["minsk", "2014"]
    assert question_entities("Why did they leave?") == []


def test_a_sentence_about_another_country_lacks_the_question_entity() -> None:
    q = Question.parse("Who is Ukraine's foreign minister?")
    assert q.entity_share("Serbian Foreign Minister Marko Djuric said so.") == 0.0
    assert q.entity_share("Ukrainian Foreign Minister Andrii Sybiha said so.") == 1.0  # "ukrain…" prefix


def test_has_kind_wants_something_new_of_the_kind() -> None:
    assert has_kind("The border is 200 kilometres away.", "number", "How far is the border?")
    assert not has_kind("The border is far away.", "number", "How far is the border?")
    assert has_kind("Marko Djuric offered.", "person", "Who offered to host?")
    assert not has_kind("Djuric offered.", "person", "Did Djuric offer to host?")


@pytest.mark.parametrize(
    ("sentence", "keep"),
    [
        ("Serbian Foreign Minister Marko Djuric stated that Belgrade is prepared to facilitate talks.", True),
        ("Come.", False),  # a fragment
        ("Will the talks take place in Belgrade this spring?", False),  # a question
        ("Talks offered in Belgrade", False),  # a headline
    ],
)
def test_sentence_filter(sentence: str, keep: bool) -> None:
    assert is_statement(sentence) is keep


@pytest.mark.parametrize(
    ("question", "text", "short"),
    [
        (
            "Who offered to facilitate the talks?",
            "Serbian Foreign Minister Marko Djuric stated that Belgrade is prepared to facilitate talks.",
            "Marko Djuric",
        ),
        ("How far is the capital from the border?", TEXT.split("\n")[1], "about 200 kilometres"),
        (
            "When was the meeting held?",
            "The meeting was held on 12 March 2025, officials said.",
            "12 March 2025",
        ),
        ("Why are the talks held?", "The talks are held to end the war.", None),
    ],
)
def test_short_answer_is_the_phrase_asked_for(question: str, text: str, short: str | None) -> None:
    span = short_answer(question, text)
    assert (text[span.start : span.end] if span else None) == short


def test_quote_is_verbatim_at_its_offsets() -> None:
    a = article()
    c = quote(1, a, Span(*a.sentences[2]), 1.7)
    assert a.text[c.start : c.end] == c.quote and c.score == 1.0


def test_a_long_sentence_is_tightened_to_the_clauses_that_answer() -> None:
    text = ", ".join(f"clause number {i} says little" for i in range(20)) + ", and Belgrade hosts the talks."
    a = article(text).model_copy(update={"sentences": [(0, len(text))], "chunks": [(0, len(text))]})
    answerer = ExtractiveAnswerer(None, None, Settings(answer_max_words=12))
    evidence = Evidence(a, 0, Span(0, len(text)), 0.9, 0)
    span = answerer.tighten(evidence, "Which city hosts the talks?")
    quoted = a.text[span.start : span.end]
    assert "Belgrade hosts the talks" in quoted and len(quoted.split()) <= 12


def test_sentence_features_have_one_row_per_sentence_in_the_models_order() -> None:
    q = Question.parse("How far is the capital from the border?")
    contexts = [
        SentenceContext(
            "The capital lies about 200 kilometres from the border.", "", "", 0, 1.0, True, True, 0.0
        ),
        SentenceContext("The meeting was held on 12 March 2025.", "", "", 1, 0.5, False, False, 1.0),
    ]
    rows = sentence_features(q, contexts, np.array([0.7, 0.2]))
    assert rows.shape == (2, len(SENTENCE_FEATURES))
    column = dict(zip(SENTENCE_FEATURES, rows.T, strict=True))
    assert column["idf_overlap"][0] > column["idf_overlap"][1]
    assert column["new_kind"][0] == 1.0 and column["cos_ctx_gap"][0] == 0.0


def test_the_shipped_model_matches_the_code_and_credits_squad() -> None:
    data = json.loads(MODEL_FILE.read_text(encoding="utf-8"))
    assert "CC BY-SA 4.0" in data["credit"] and "make train" in data["made_by"]
    model = load_model()
    assert model.sentence.features == SENTENCE_FEATURES
    assert model.leader.features == LEADER_FEATURES
    assert model.evidence.features == EVIDENCE_FEATURES


def test_the_answer_leads_with_the_name_asked_for(shipped: Pipeline) -> None:
    answer = shipped.query("Who is Serbia's foreign minister?")
    assert answer.found and answer.short_answer is not None and "Djuric" in answer.short_answer
    assert answer.text.startswith(answer.short_answer)
    assert answer.short_answer in answer.citations[0].quote
    assert 0.0 <= answer.confidence <= 1.0


def test_an_entity_the_articles_never_name_is_not_answered(shipped: Pipeline) -> None:
    answer = shipped.query("Who is Portugal's foreign minister?")
    assert not answer.found and answer.text == NOT_FOUND


def test_a_question_asking_for_several_quotes_each_article() -> None:
    belgrade = article("Belgrade is prepared to facilitate the negotiations between the two sides.")
    minsk = article("Minsk, the Belarusian capital, has also offered to host the next round of talks.")
    minsk = minsk.model_copy(update={"id": "b"})
    ranked = [
        Evidence(belgrade, 0, Span(0, len(belgrade.text)), 0.8, 0),
        Evidence(belgrade, 0, Span(0, 10), 0.7, 0),
        Evidence(minsk, 0, Span(0, len(minsk.text)), 0.6, 1),
    ]
    answerer = ExtractiveAnswerer(None, None, Settings())
    both = answerer.pick(ranked, "Which two capitals offered to host the talks?")
    assert [e.article.id for e in both] == ["a", "b"]
    assert [e.article.id for e in answerer.pick(ranked, "Which capital offered to host the talks?")] == ["a"]
    weak = [*ranked[:2], Evidence(minsk, 0, Span(0, len(minsk.text)), 0.2, 1)]
    assert len(answerer.pick(weak, "Which two capitals offered to host the talks?")) == 1
