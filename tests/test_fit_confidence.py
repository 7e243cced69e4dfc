"""The confidence fit's pieces (evals/fit_confidence.py) on tiny made-up questions: the fitted penalty
follows the data, and the threshold answers the share of answerable questions it was asked to."""

from __future__ import annotations

import random

import numpy as np

from evals.fit_confidence import Answered, Asked, choose_threshold, fit_negation_penalty, hand_set_report


def answered(kind: str, confidence: float, unmatched: bool, right: bool) -> Answered:
    return Answered(kind, "doc", confidence, unmatched, right)


def made_up(unmatched_hurts: bool, rng: random.Random) -> list[Answered]:
    """Questions whose answer is right more often the higher the confidence; an unmatched negation
    makes it wrong (or changes nothing)."""
    rows = []
    for _ in range(2000):
        confidence = rng.random()
        unmatched = rng.random() < 0.3
        right = rng.random() < confidence and not (unmatched_hurts and unmatched)
        rows.append(answered("answerable", confidence, unmatched, right))
    return rows


def test_the_negation_penalty_is_large_when_unmatched_negations_are_wrong_and_small_when_not() -> None:
    assert fit_negation_penalty(made_up(True, random.Random(1))) > 1.0
    assert fit_negation_penalty(made_up(False, random.Random(1))) < 0.1


def test_the_hand_set_report_counts_each_kind_at_the_threshold() -> None:
    rows = [
        answered("answerable", 0.9, False, True),
        answered("answerable", 0.6, True, True),
        answered("negated", 0.9, True, False),
        answered("miss", 0.3, False, False),
    ]
    without = hand_set_report(rows, 0.5, 0.0)
    assert without["answered when answerable"] == 1.0 and without["abstained (negated)"] == 0.0
    docked = hand_set_report(rows, 0.5, 0.5)
    assert docked["answered when answerable"] == 0.5 and docked["right when answered"] == 1.0
    assert docked["abstained (negated)"] == 1.0 and docked["abstained (miss)"] == 1.0
    assert docked["questions (swap)"] == 0


def test_the_threshold_answers_the_share_of_answerable_questions_asked_for() -> None:
    rng = np.random.default_rng(2)
    asked = [
        Asked(
            f"q{i}",
            "answerable" if i % 2 else "miss",
            "doc",
            rng.normal(size=(3, 4)),
            np.array([1, 0, 0]) > 0,
        )
        for i in range(400)
    ]
    weights = (1.0, 0.5, 0.0, -1.0, 0.0)
    report = choose_threshold(asked, weights, 0.9)
    assert 0.9 <= report["answered when answerable"] < 0.91
    assert report["questions (answerable)"] == 200 and report["questions (miss)"] == 200
