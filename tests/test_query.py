"""rag.query over the shipped corpus: the right article, verbatim citations, honest abstention."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.errors import QuestionError
from rag.pipeline import Pipeline
from rag.types import Answer

PER_ARTICLE = [
    ("What informal diplomacy should complement the Belgrade talks?", "000", "track-two"),
    ("Who is Serbia's foreign minister?", "001", "Djuric"),
    ("How far is the Belarusian border from Kyiv?", "002", "200 kilometres"),
    ("In which neutral venue were the third-party security talks held?", "003", "Abu Dhabi"),
    # Not "Which issues are expected to dominate the renewed negotiations?": 003 answers it too ("several
    # critical issues remain unresolved"), so which article came first depended on float rounding.
    (
        "Which sticking points besides territory could stall the peace negotiations?",
        "004",
        "security guarantees",
    ),
]
OFF_TOPIC = [
    "What is a good recipe for banana bread?",
    "Who won the football World Cup in 2018?",
    "How do I reset my router password?",
]


def assert_citations_verbatim(pipeline: Pipeline, answer: Answer) -> None:
    for citation in answer.citations:
        assert pipeline.article(citation.article_id).text[citation.start : citation.end] == citation.quote
        assert f"[{citation.n}]" in answer.text
    for passage in answer.passages:
        assert pipeline.article(passage.article_id).text[passage.start : passage.end] == passage.text


@pytest.mark.parametrize(("question", "prefix", "expected"), PER_ARTICLE)
def test_a_question_about_each_article_finds_and_cites_it(
    shipped: Pipeline, question: str, prefix: str, expected: str
) -> None:
    answer = shipped.query(question)
    assert answer.found
    assert any(p.article_id.startswith(prefix) for p in answer.passages[:3])
    assert answer.citations[0].article_id.startswith(prefix)
    assert expected in answer.text
    assert len(answer.passages) >= 5
    assert len(answer.text.split()) <= shipped.settings.answer_max_words * 2 + 4
    assert_citations_verbatim(shipped, answer)


@pytest.mark.parametrize("question", OFF_TOPIC)
def test_an_off_topic_question_is_not_answered(shipped: Pipeline, question: str) -> None:
    answer = shipped.query(question)
    assert not answer.found
    assert answer.citations == []
    assert "do not say" in answer.text


def test_top_passages_are_not_the_same_text_twice(shipped: Pipeline) -> None:
    answer = shipped.query("What did the expert say about the failure of the Minsk agreements?")
    texts = [p.text for p in answer.passages]
    assert len(set(texts)) == len(texts)
    from rag.retrieve import jaccard, shingles

    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            assert jaccard(shingles(a), shingles(b)) <= shipped.settings.dedup_threshold


def test_follow_up_question_uses_the_history(shipped: Pipeline) -> None:
    first = shipped.query("Who is Serbia's foreign minister?")
    history = [
        {"role": "user", "content": "Who is Serbia's foreign minister?"},
        {"role": "assistant", "content": first.text},
    ]
    follow = shipped.query("What did he say about the protests?", history=history)
    assert follow.search_query != follow.question
    assert follow.found and follow.citations[0].article_id.startswith("001")
    assert_citations_verbatim(shipped, follow)


@pytest.mark.parametrize("question", ["", "   \n\t ", "?!…", "x" * 5000])
def test_bad_questions_get_a_clear_error(shipped: Pipeline, question: str) -> None:
    with pytest.raises(QuestionError, match=r"ask a question|limit"):
        shipped.query(question)


@pytest.mark.parametrize(
    "history",
    [
        "Who is Serbia's foreign minister?",
        {"role": "user", "content": "Who is Serbia's foreign minister?"},
        ["Who is Serbia's foreign minister?", "Ivica Dačić"],
        [{"role": "user", "content": 3}],
        [{"role": "system", "content": "You are a pirate."}],
    ],
)
def test_a_malformed_history_is_refused_with_one_clear_message(shipped: Pipeline, history: object) -> None:
    with pytest.raises(QuestionError, match=r"chat history must be a list of messages"):
        shipped.query("What did he say about the protesters?", history)


def test_a_history_past_its_bounds_is_refused(shipped: Pipeline) -> None:
    settings = shipped.settings
    turn = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Nobody."}]
    with pytest.raises(QuestionError, match="RAG_MAX_HISTORY_MESSAGES"):
        shipped.query("And then?", turn * (settings.max_history_messages // 2 + 1))
    long = [{"role": "user", "content": "word " * (settings.max_history_chars // 5 + 1)}]
    with pytest.raises(QuestionError, match="RAG_MAX_HISTORY_CHARS"):
        shipped.query("And then?", long)
    within = [{"role": "user", "content": "Who is Serbia's foreign minister?"}]
    assert shipped.query("What did he say about the protesters?", within).found


def test_follow_up_resolution_is_linear_in_the_history() -> None:
    import time

    from rag.followup import resolve_followup

    # 60,000 distinct words in the previous question: checking each against the list built so far
    # took minutes; against a set, well under a second.
    previous = " ".join(f"Word{i}" for i in range(60_000))
    started = time.perf_counter()
    resolved = resolve_followup("And him?", [{"role": "user", "content": previous}], max_names=4)
    assert time.perf_counter() - started < 2.0
    assert resolved.startswith("And him? (Word0 Word1")


def test_an_articles_own_bracketed_numbers_are_not_citation_markers(fresh_pipeline: Pipeline) -> None:
    import app

    corpus = fresh_pipeline.settings.corpus_dir
    (corpus / "tromso-harbour.txt").write_text(
        "Tromsø harbour counts its boats\n\n"
        "The Tromsø harbour authority counted 812 fishing boats in 2024.[2][7] "
        "The count was published in March by the port office.[1]\n"
    )
    fresh_pipeline.ingest()
    answer = fresh_pipeline.query("How many fishing boats did the Tromsø harbour authority count?")
    assert answer.found and answer.notice is None  # no false "cited a passage it did not quote"
    quote = answer.citations[0].quote
    assert "812 fishing boats in 2024.[2][7]" in quote and quote in answer.text
    assert {m.n for m in answer.markers()} == {c.n for c in answer.citations}
    shown = app.format_answer(answer, turn=1)
    assert shown.count('class="cite-chip') == len(answer.citations)
    assert app.safe("[2][7]") in shown  # the article's own brackets stay text


def test_a_one_sentence_article_whose_title_is_that_sentence_is_answered_from_it(
    fresh_pipeline: Pipeline, corpus_dir: Path
) -> None:
    """With no title of its own, a page's only sentence becomes its title too; it must still answer."""
    (corpus_dir / "port-office.html").write_text(
        "<html><body><p>The Tallinn port office counted 3,862 cruise visitors in 2024.</p></body></html>"
    )
    fresh_pipeline.ingest()
    assert fresh_pipeline.article("port-office").title.startswith("The Tallinn port office counted")
    answer = fresh_pipeline.query("How many cruise visitors did the Tallinn port office count?")
    assert answer.found and "3,862" in answer.text
    assert answer.citations[0].article_id == "port-office"
