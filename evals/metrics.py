"""Scoring one system's answers on the question set; the same functions score ours and the baseline."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_MARKER = re.compile(r"\[\d+\]")


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def contains_any(haystack: str, needles: Sequence[str]) -> bool:
    hay = norm(haystack)
    return any(norm(n) in hay for n in needles if n)


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
    first_support_rank: int | None = None  # 1-based rank of the first passage holding the evidence
    contains_answer: bool = False
    cited_support: bool = False
    words: int = 0


def judge(question: dict[str, Any], **result: Any) -> Outcome:
    """Score one system's result (found, text, passages, quotes, invalid_citations, seconds)."""
    outcome = Outcome(
        id=question["id"], type=question["type"], answerable=bool(question["answers"]), **result
    )
    return score_outcome(outcome, question)


def score_outcome(outcome: Outcome, question: dict[str, Any]) -> Outcome:
    evidence, answers = question["evidence"], question["answers"]
    for rank, passage in enumerate(outcome.passages, start=1):
        if contains_any(passage, evidence):
            outcome.first_support_rank = rank
            break
    outcome.contains_answer = contains_any(outcome.text, answers)
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
