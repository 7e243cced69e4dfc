"""The answer step's pieces on tiny texts: answer typing, the sentence filter, quote shaping, the short
answer, and the fine-tuned reranker (the real shipped weights, run by ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.answer import Evidence, ExtractiveAnswerer, asks_for_several, is_statement
from rag.chunking import sentence_spans
from rag.embeddings import resolve_model_path
from rag.errors import ModelNotFoundError
from rag.pipeline import Pipeline
from rag.rerank import (
    AnswerReranker,
    RerankerCard,
    add_low_rank_adapters,
    build_pair_scorer,
    packed,
    pair_tokenizer,
    read_weights,
    trained_state_names,
)
from rag.settings import Settings
from rag.short_answer import expected_kind, short_answer
from rag.types import IndexedArticle, Span
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many boats were sold?", "number"),
        ("How far is the border from the capital?", "number"),
        ("When did the talks begin?", "date"),
        ("In which year was the bridge opened?", "date"),
        ("Who offered to host the talks?", "person"),
        ("Where will the delegations meet?", "place"),
        ("Which city offered its stadium?", "place"),
        ("Why did the talks fail?", None),
    ],
)
def test_the_kind_of_answer_comes_from_the_question_word(question: str, kind: str | None) -> None:
    assert expected_kind(question) == kind


@pytest.mark.parametrize(
    ("sentence", "answers"),
    [
        ("The mayor opened the new bridge on Tuesday morning.", True),
        ("Who will pay for the bridge?", False),  # a question does not answer
        ("Bridge opens", False),  # a fragment or headline
        ("City council approves the long awaited bridge budget after a stormy night session", False),
        (
            "The bridge, which took nine years to build and cost far more than planned, opened to traffic "
            "on a windy morning with crowds watching from the banks",
            True,
        ),  # long enough to be prose
    ],
)
def test_only_statements_can_answer(sentence: str, answers: bool) -> None:
    assert is_statement(sentence) is answers


def phrase(question: str, quote: str) -> str | None:
    span = short_answer(question, quote)
    return None if span is None else quote[span.start : span.end]


@pytest.mark.parametrize(
    ("question", "quote", "expected"),
    [
        (
            "Who offered to host the talks in Lisbon?",
            "Portuguese Foreign Minister Ana Costa said that Lisbon is ready to host the talks.",
            "Ana Costa",
        ),
        (
            "How far is the port from the capital?",
            "The port lies only 80 kilometres from the capital.",
            "80 kilometres",
        ),
        (
            "When was the treaty signed?",
            "The treaty was signed on 4 June 2021 in a small hall.",
            "4 June 2021",
        ),
        ("Where will the ministers meet?", "The ministers will meet in Valletta next week.", "Valletta"),
        ("Why did the ministers meet?", "The ministers met to settle the fishing dispute.", None),
        ("Who chaired the meeting?", "The meeting was chaired by the eldest member.", None),  # no name there
        ("Who offered to mediate?", "The Norwegian proposal to mediate was welcomed.", None),  # a nationality
        (  # a weekday is a date, never the place or person asked for
            "Which city did the governor offer as a venue?",
            "In remarks published Thursday, the governor named Tartu, an Estonian university town, as venue.",
            "Tartu",
        ),
        ("Who spoke on Monday?", "On Monday, Ilse Vogel spoke first.", "Ilse Vogel"),
        ("When did Ilse Vogel speak?", "Ilse Vogel spoke on Monday.", "Monday"),
        # a nationality nearer the question's words is not the place; a place may end in -an
        ("Where were the talks held?", "The talks were held in the Estonian capital, Tallinn.", "Tallinn"),
        ("Where were the talks held?", "The talks were held in Japan.", "Japan"),
        ("Which country sent observers?", "Observers came from the Finnish government.", "Finnish"),
        (  # the question says Norway, if only in the possessive
            "In which town did the bridge collapse that set off Norway's protests?",
            "Norway has seen months of protests since a bridge collapsed in Alta.",
            "Alta",
        ),
        (  # a name ends with its sentence, whatever capitalised word opens the next
            "Where will the envoy meet Ilse Vogel?",
            "The envoy said he would see Ilse Vogel. This meeting is to take place in Bergen.",
            "Bergen",
        ),
    ],
)
def test_the_short_answer_is_the_phrase_asked_for(question: str, quote: str, expected: str | None) -> None:
    assert phrase(question, quote) == expected


def test_the_short_answer_skips_names_the_question_already_says() -> None:
    quote = "Lisbon said that Marta Silva will lead the Lisbon delegation."
    assert phrase("Who will lead the Lisbon delegation?", quote) == "Marta Silva"


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> AnswerReranker:
    return AnswerReranker(tmp_path_factory.mktemp("models"))


def test_the_reranker_prefers_the_sentence_that_answers(reranker: AnswerReranker) -> None:
    question = "Who designed the new harbour bridge in Tromsø?"
    answers = "The new harbour bridge in Tromsø was designed by the engineer Ingrid Dahl."
    about = "The new harbour bridge in Tromsø is the longest in the north of Norway."
    p = reranker.probabilities(question, [answers, about])
    assert p[0] > p[1]
    assert p.min() >= 0 and p.max() <= 1


def test_the_reranker_notices_when_the_place_asked_about_differs(reranker: AnswerReranker) -> None:
    """Right kind, wrong entity: a sentence about Bergen's bridge does not say who designed Tromsø's."""
    sentence = "The new harbour bridge in Bergen was designed by the engineer Ingrid Dahl."
    asked_right, asked_wrong = (
        reranker.logits(f"Who designed the new harbour bridge in {city}?", [sentence])[0]
        for city in ("Bergen", "Tromsø")
    )
    assert asked_right > asked_wrong


def test_the_reranker_doubts_a_positive_answer_to_a_negated_question(reranker: AnswerReranker) -> None:
    """Its calibration (fitted with negated SQuAD questions) docks a sentence that negates nothing; a
    sentence that does negate keeps the plain question's footing."""
    positive = "The new harbour bridge in Tromsø was designed by the engineer Ingrid Dahl."
    negative = "The new harbour bridge in Tromsø was not designed by the engineer Ingrid Dahl."
    plain = reranker.probabilities("Who designed the new harbour bridge in Tromsø?", [positive])[0]
    negated_positive, negated_negative = reranker.probabilities(
        "Who didn't design the new harbour bridge in Tromsø?", [positive, negative]
    )
    assert reranker.card.negation_weight < 0
    assert negated_positive < plain / 5
    assert negated_negative > negated_positive


def test_the_onnx_reranker_gives_the_shipped_weights_logits(reranker: AnswerReranker) -> None:
    import torch

    card = reranker.card
    base = resolve_model_path(card.base_model)
    model = build_pair_scorer(base, card.trained_layers, read_weights())
    question = "How long is the bridge?"
    sentences = ["The bridge is 1,200 metres long.", "It opened in 1998 after a long and costly delay."]
    encodings = pair_tokenizer(base, card.max_tokens).encode_batch([(question, s) for s in sentences])
    with torch.no_grad():
        expected = model(
            torch.tensor([e.ids for e in encodings]), torch.tensor([e.attention_mask for e in encodings])
        ).numpy()
    # int8 weights: the order is kept and the logits stay close (the calibration is fitted on these).
    got = reranker.logits(question, sentences)
    assert list(np.argsort(got)) == list(np.argsort(expected))
    assert np.abs(got - expected).max() < 0.5


def test_low_rank_adapters_survive_packing_and_merge_into_the_shipped_model(tmp_path: Path) -> None:
    """What training runs (base + adapters) and what a query runs (the packed factors merged into the base
    weights) give the same logits."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = resolve_model_path(RerankerCard.read().base_model)
    trained = build_pair_scorer(base, 2, None)
    adapters = add_low_rank_adapters(trained, rank=4)
    assert len(adapters) == 2 * 6 * 4  # two factors for six maps in each of the four lower layers
    with torch.no_grad():
        for factor in adapters:
            factor.normal_(std=0.05)  # B starts at zero; make the change visible
    state = trained.state_dict()
    shipped = {n: state[n] for n in trained_state_names(trained)}
    assert sum(n.endswith("low_rank_a") for n in shipped) == 24
    path = tmp_path / "weights.safetensors"
    save_file(packed(shipped), str(path))
    merged = build_pair_scorer(base, 2, read_weights(path))
    plain = build_pair_scorer(base, 2, None)
    encodings = pair_tokenizer(base, 64).encode_batch(
        [("How long is the bridge?", "The bridge is 1,200 metres long."), ("How long?", "It opened in 1998.")]
    )
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.no_grad():
        want, got, without = trained(ids, mask), merged(ids, mask), plain(ids, mask)
    assert torch.allclose(want, got, atol=0.05)
    assert not torch.allclose(want, without, atol=0.05)


def test_a_missing_reranker_card_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="card"):
        RerankerCard.read(tmp_path / "absent.json")


def tiny_article(text: str) -> IndexedArticle:
    return IndexedArticle(
        id="tiny",
        title="Tiny",
        text=text,
        source="tiny.txt",
        content_hash="0",
        chunks=[(0, len(text))],
        sentences=[(s.start, s.end) for s in sentence_spans(text)],
    )


def evidence(article: IndexedArticle, index: int, score: float = 0.9) -> Evidence:
    return Evidence(article, index, Span(*article.sentences[index]), score, 0)


@pytest.fixture
def answerer(tmp_path: Path) -> ExtractiveAnswerer:
    """The answer step's shaping alone: it reads only the article given and the settings."""
    settings = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index", answer_max_words=12)
    return ExtractiveAnswerer(index=None, embedder=None, settings=settings)


def test_a_long_sentence_is_cut_to_the_clauses_that_answer(answerer: ExtractiveAnswerer) -> None:
    article = tiny_article(
        "After a long night of talks in the old town hall, which lasted until dawn, the ministers agreed "
        "on a ceasefire along the river, and the mayor thanked everyone for coming."
    )
    span = answerer.with_context(evidence(article, 0), "What did the ministers agree on?", [])
    quote = article.text[span.start : span.end]
    assert "ministers agreed on a ceasefire along the river" in quote
    assert len(quote.split()) <= 12 and quote == quote.strip(" ,")


def test_a_sentence_that_leans_on_the_next_keeps_it(answerer: ExtractiveAnswerer) -> None:
    article = tiny_article("Two cities offered to host. They are Vienna and Geneva. The weather was fine.")
    span = answerer.with_context(evidence(article, 0), "Which cities offered to host?", [])
    assert article.text[span.start : span.end] == "Two cities offered to host. They are Vienna and Geneva."


def test_a_sentence_introducing_a_list_brings_its_items(answerer: ExtractiveAnswerer) -> None:
    article = tiny_article("The offers came from:\nVienna\nGeneva\n\nNothing else was said.")
    span = answerer.extend_list(article, Span(*article.sentences[0]))
    assert article.text[span.start : span.end] == "The offers came from:\nVienna\nGeneva"


@pytest.mark.parametrize(
    ("question", "several"),
    [
        ("Which two capitals offered to host the talks?", True),
        ("Which countries sent observers?", True),
        ("Who all attended the summit?", True),
        ("Which city offered to host the talks?", False),
        ("What is the capital of the region?", False),
        ("Which process was used?", False),
    ],
)
def test_questions_asking_for_several_things_are_told_apart(question: str, several: bool) -> None:
    assert asks_for_several(question) is several


def test_the_pipeline_answers_with_the_reranker_when_it_is_on(tmp_path: Path, corpus_dir: Path) -> None:
    """RAG_ANSWER_RERANKER=true: the confidence is the calibrated probability, the quote still verbatim."""
    pipeline = Pipeline(make_settings(tmp_path, answer_reranker=True))
    pipeline.ingest()
    answer = pipeline.query("How far is the Belarusian border from Kyiv?")
    assert answer.found and 0 < answer.confidence <= 1
    assert answer.confidence >= pipeline.answerer.threshold
    assert "200 kilometres" in answer.citations[0].quote
    article = pipeline.index.articles[answer.citations[0].article_id]
    assert article.text[answer.citations[0].start : answer.citations[0].end] == answer.citations[0].quote
    assert answer.short_answer == "200 kilometres" and answer.text.startswith("200 kilometres — ")
