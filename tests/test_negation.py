"""Negated questions (rag/negation.py): how they are recognised, how the fit makes them, and what the
answer step does when a quote answers "what did X not do?" with what X did."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.answer import fitted_negation_penalty
from rag.errors import ModelNotFoundError
from rag.negation import is_negated, negate, unmatched_negation
from rag.pipeline import Pipeline
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("question", "negated"),
    [
        ("Which ports did the new rules not cover?", True),
        ("Which club hasn't renewed the coach's contract?", True),
        ("Who never signed the accord?", True),
        ("Who signed the accord?", False),
        ("What is the notion behind the plan?", False),  # "not" inside a word
        ("Where is Nottingham?", False),
    ],
)
def test_a_negated_question_is_recognised(question: str, negated: bool) -> None:
    assert is_negated(question) is negated


@pytest.mark.parametrize(
    ("text", "unmatched"),
    [
        ("The new rules cover every port on the coast.", True),
        ("The new rules do not cover the northern ports.", False),
        ("Norway declined to sign the accord.", False),
        ("Every member except Norway signed.", False),
        ("Hungary was exempt from the embargo.", False),
        ("Norway has yet to reply to the invitation.", False),
        ("Norway abstained in the vote.", False),
    ],
)
def test_a_quote_that_negates_nothing_leaves_a_negated_question_unmatched(text: str, unmatched: bool) -> None:
    assert unmatched_negation("What did the members not do?", text) is unmatched
    assert not unmatched_negation("What did the members do?", text)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Who was the first king?", "Who wasn't the first king?"),
        ("What did the mayor announce?", "What didn't the mayor announce?"),
        ("When can a ferry leave the harbour?", "When can't a ferry leave the harbour?"),
        ("What will happen next?", "What won't happen next?"),
        ("Is it raining?", "Isn't it raining?"),
        ("What causes rain?", None),  # no auxiliary to negate
        ("Who was not there?", None),  # negated already
    ],
)
def test_negate_makes_the_fits_unanswerable_twin(question: str, expected: str | None) -> None:
    assert negate(question) == expected


def test_the_fitted_penalty_ships_and_a_missing_card_is_a_clear_error(tmp_path: Path) -> None:
    assert fitted_negation_penalty() > 0
    with pytest.raises(ModelNotFoundError, match="confidence card"):
        fitted_negation_penalty.__wrapped__(tmp_path / "absent.json")


def test_a_negated_question_answered_by_a_positive_statement_loses_its_confidence(
    tmp_path: Path,
) -> None:
    """The same question with and without "not", over one article that states only the positive: the
    negated one is docked by the penalty and, with a large one, answered "the articles do not say"."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bridge.txt").write_text(
        "The city council approved the new river bridge on Tuesday after a long debate. "
        "Construction is expected to start in the spring and to last two years.\n",
        encoding="utf-8",
    )
    pipeline = Pipeline(make_settings(tmp_path, negation_penalty=0.0, min_answer_score=-1.0))
    pipeline.ingest()
    plain = pipeline.query("What did the city council approve on Tuesday?")
    negated = pipeline.query("What did the city council not approve on Tuesday?")
    assert plain.found and negated.found and negated.citations[0].quote == plain.citations[0].quote

    docked = Pipeline(make_settings(tmp_path, negation_penalty=0.25, min_answer_score=-1.0))
    assert docked.query("What did the city council not approve on Tuesday?").confidence == pytest.approx(
        negated.confidence - 0.25, abs=1e-3
    )
    assert docked.query("What did the city council approve on Tuesday?").confidence == pytest.approx(
        plain.confidence, abs=1e-3
    )
    refused = Pipeline(make_settings(tmp_path, negation_penalty=10.0)).query(
        "What did the city council not approve on Tuesday?"
    )
    assert not refused.found
