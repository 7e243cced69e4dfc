"""Negated questions: "Which ports did the new rules not cover?" asks for what a sentence denies.

A sentence that matches such a question word for word but states the positive ("The new rules cover
every port on the coast …") is the most tempting wrong answer there is: the meaning and word scores rate
it highly, and neither the embedder nor the reranker was trained on questions that negate. SQuAD 2.0's
writers made about a sixth of its unanswerable questions this way, and news readers ask them too
("Which club did not renew the coach's contract?"). The answer step uses ``unmatched_negation`` as a
confidence feature whose weight is fitted (``evals/fit_confidence.py``), not as a rule.
"""

from __future__ import annotations

import re

# How a question negates: the words SQuAD 2.0's negated questions use.
_QUESTION_NEGATION = re.compile(
    r"\b(not|never|no|none|nor|neither|nobody|nothing|nowhere|cannot)\b|n[’']t\b", re.I
)
# How a sentence can state what such a question asks for: besides the negations themselves, the verbs
# and words that deny, refuse, withhold or leave out ("declined to sign", "has yet to reply", "was
# exempt", "except Norway"), as news reports them.
_STATEMENT_NEGATION = re.compile(
    r"\b(not|never|no|none|nor|neither|nobody|nothing|nowhere|cannot|without|unable|instead|rather than|"
    r"yet to|ruled out|stopped short|free (?:of|from)|"
    r"lack\w*|fail\w*|refus\w*|declin\w*|reject\w*|den(?:y|ies|ied|ial)|exempt\w*|except\w*|exclud\w*|"
    r"absen\w*|neglect\w*|avoid\w*|omit\w*|abstain\w*|withh[eo]ld\w*|oppos\w*|boycott\w*)\b|n[’']t\b",
    re.I,
)
_AUXILIARY = re.compile(r"\b(is|was|are|were|did|does|do|has|have|had|can|could|will|would|should)\b", re.I)
_CONTRACTED = {"can": "can't", "will": "won't"}


def is_negated(question: str) -> bool:
    """Whether the question asks about something that is not, was not or did not."""
    return bool(_QUESTION_NEGATION.search(question))


def unmatched_negation(question: str, text: str) -> bool:
    """A negated question answered by a text that negates, refuses or excludes nothing."""
    return is_negated(question) and not _STATEMENT_NEGATION.search(text)


def negate(question: str) -> str | None:
    """The question with its first auxiliary verb contracted with "n't" ("Who was …" -> "Who wasn't …",
    "What did X do" -> "What didn't X do": the contraction reads naturally wherever the auxiliary sits),
    or None when it has no auxiliary or already negates. Makes the synthetic unanswerable questions the
    confidence is fitted on, as SQuAD 2.0's writers made theirs."""
    if is_negated(question):
        return None
    match = _AUXILIARY.search(question)
    if match is None:
        return None
    word = match.group(0)
    negated = _CONTRACTED.get(word.lower(), word.lower() + "n't")
    if word[0].isupper():
        negated = negated[0].upper() + negated[1:]
    return question[: match.start()] + negated + question[match.end() :]
