"""The reranker's training pairs (evals/train_reranker.py) on tiny made-up questions: the swapped twins
that teach it a right-kind, wrong-entity question is not answered."""

from __future__ import annotations

import random

from evals.train_reranker import swapped, swapped_within

SENTENCE = "Danish Fisheries Minister Jakob Holm said that Norway would join the talks in Aarhus."


def test_a_role_swap_takes_another_name_of_the_sentence_never_the_answer() -> None:
    question = "Who is the Danish fisheries minister?"
    twins = {swapped_within(question, SENTENCE, "Jakob Holm", random.Random(seed)) for seed in range(20)}
    assert twins == {"Who is the Norway fisheries minister?", "Who is the Aarhus fisheries minister?"}


def test_a_role_swap_needs_another_name_and_never_asks_the_same() -> None:
    assert swapped_within("Who is the minister?", SENTENCE, "Jakob Holm", random.Random(0)) is None
    only_longer = "The United Nations General Assembly met in Geneva."
    question = "When did the United Nations meet?"
    assert swapped_within(question, only_longer, "Geneva", random.Random(0)) is None


def test_an_article_swap_takes_a_name_the_sentence_does_not_hold() -> None:
    names = ["Aarhus", "Bergen", "Norway", "2019"]
    twin = swapped("Where did Norway join the talks?", SENTENCE, names, random.Random(0))
    assert twin == "Where did Bergen join the talks?"
