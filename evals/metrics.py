"""Scoring one system's answers on a question set; the same functions score ours and the baseline.

Two ways a question says where its answer is:
- ``evidence``: verbatim sentences from the cleaned text (``evals/questions.jsonl``, the news set). A
  passage supports the answer when it holds one of them.
- ``gold``: the article and span of the paragraph the question was written against (SQuAD-style sets
  such as ``wiki-squad2``; ``evals.sets.locate_gold`` finds its ``context`` in the cleaned text). A
  passage supports the answer when it is from that article, overlaps that paragraph and holds an
  accepted answer.

An answer contains gold when, both normalised as the SQuAD evaluation script does (lower case,
punctuation and the articles a / an / the removed, white space collapsed), its words hold an accepted
answer's words as a contiguous run. One difference from SQuAD: punctuation becomes a space rather than
nothing, so scraped text such as "for us,Minsk is" keeps "Minsk" a word of its own ("Serbia's" holds
"Serbia"; "thus" does not hold "US").
"""

from __future__ import annotations

import re
import statistics
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_MARKER = re.compile(r"\[\d+\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# string.punctuation is ASCII only; news text also quotes and dashes typographically.
_PUNCTUATION = set(string.punctuation) | set("‘’“”–—…«»")

Location = tuple[str, int, int]  # article id, start, end (offsets into the cleaned text)


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def contains_any(haystack: str, needles: Sequence[str]) -> bool:
    hay = norm(haystack)
    return any(norm(n) in hay for n in needles if n)


def normalize_answer(text: str) -> str:
    """SQuAD's ``normalize_answer`` (lower case, no punctuation, no a / an / the, single spaces), with
    punctuation turned into a space instead of removed."""
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether ``text`` (citation markers ignored) holds an accepted answer as a run of whole words,
    both normalised."""
    hay = f" {normalize_answer(_MARKER.sub(' ', text))} "
    return any(f" {needle} " in hay for needle in (normalize_answer(a) for a in answers) if needle)


def overlaps(a: Location, b: Location) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


@dataclass
class Outcome:
    """What a system did with one question, in system-neutral terms."""

    id: str
    type: str
    answerable: bool
    found: bool
    text: str
    passages: list[str]
    quotes: list[str]
    invalid_citations: int
    seconds: float
    passage_locations: list[Location] = field(default_factory=list)  # one per passage, when known
    quote_locations: list[Location] = field(default_factory=list)  # one per quote, when known
    confidence: float | None = None  # the system's own score for its answer, when it gives one
    first_support_rank: int | None = None  # 1-based rank of the first passage holding the evidence
    contains_answer: bool = False
    cited_support: bool = False
    words: int = 0


def judge(question: dict[str, Any], **result: Any) -> Outcome:
    """Score one system's result (found, text, passages, quotes, invalid_citations, seconds and,
    optionally, passage_locations, quote_locations, confidence)."""
    outcome = Outcome(
        id=question["id"],
        type=question.get("type") or ("factoid" if question["answers"] else "unanswerable"),
        answerable=bool(question["answers"]),
        **result,
    )
    return score_outcome(outcome, question)


def supports(question: dict[str, Any], text: str, location: Location | None) -> bool:
    """Whether a passage or quote (its text, and where it is when known) holds the gold evidence."""
    answers = question["answers"]
    gold = question.get("gold")
    if gold is not None:
        at_gold = location is not None and overlaps(location, (gold[0], gold[1], gold[2]))
        return at_gold and contains_answer(text, answers)
    evidence = question.get("evidence") or []
    return contains_any(text, evidence)


def score_outcome(outcome: Outcome, question: dict[str, Any]) -> Outcome:
    answers = question["answers"]

    def location(locations: list[Location], i: int) -> Location | None:
        return locations[i] if i < len(locations) else None

    for rank, passage in enumerate(outcome.passages, start=1):
        if supports(question, passage, location(outcome.passage_locations, rank - 1)):
            outcome.first_support_rank = rank
            break
    outcome.contains_answer = contains_answer(outcome.text, answers)
    if question.get("gold") is not None:
        outcome.cited_support = any(
            supports(question, q, location(outcome.quote_locations, i)) for i, q in enumerate(outcome.quotes)
        )
    else:
        evidence = question.get("evidence") or []
        outcome.cited_support = any(contains_any(q, evidence + answers) for q in outcome.quotes)
    outcome.words = len(_MARKER.sub("", outcome.text).split())
    return outcome


@dataclass
class Summary:
    n: int
    hit_at_1: float
    hit_at_3: float
    hit_at_5: float
    mrr: float
    answer_containment: float
    median_answer_words: float
    cited_support: float
    answered_when_answerable: float
    abstained_when_unanswerable: float
    invalid_citations: int
    p50_ms: float
    p95_ms: float
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(values: Sequence[bool]) -> float:
    return round(sum(values) / len(values), 3) if values else float("nan")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 1)


def summarize(outcomes: Sequence[Outcome], with_types: bool = True) -> Summary:
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable]
    ranks = [o.first_support_rank for o in answerable]
    answered = [o for o in answerable if o.found]
    summary = Summary(
        n=len(outcomes),
        hit_at_1=_rate([r is not None and r <= 1 for r in ranks]),
        hit_at_3=_rate([r is not None and r <= 3 for r in ranks]),
        hit_at_5=_rate([r is not None and r <= 5 for r in ranks]),
        mrr=round(statistics.fmean([1 / r if r else 0.0 for r in ranks]), 3) if ranks else float("nan"),
        answer_containment=_rate([o.contains_answer for o in answerable]),
        median_answer_words=statistics.median([o.words for o in answered]) if answered else float("nan"),
        cited_support=_rate([o.cited_support for o in answered]),
        answered_when_answerable=_rate([o.found for o in answerable]),
        abstained_when_unanswerable=_rate([not o.found for o in unanswerable]),
        invalid_citations=sum(o.invalid_citations for o in outcomes),
        p50_ms=_percentile([o.seconds for o in outcomes], 0.5),
        p95_ms=_percentile([o.seconds for o in outcomes], 0.95),
    )
    if with_types:
        for kind in sorted({o.type for o in outcomes}):
            sub = summarize([o for o in outcomes if o.type == kind], with_types=False)
            summary.by_type[kind] = {
                k: v for k, v in sub.as_dict().items() if k not in ("by_type", "invalid_citations")
            }
    return summary
