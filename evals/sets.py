"""The question sets `make eval` runs, each over its own corpus.

By default: the shipped set (``evals/questions.jsonl`` over ``corpus/``), the reworded set
(``evals/reworded.jsonl`` over the same articles: questions worded away from the text, written to
measure that and never tuned on) and ``wiki-squad2`` (read from
``../shared/data`` beside the repository at eval time, never copied into it; skipped with a note when
absent). ``--set NAME=QUESTIONS:CORPUS`` adds others.

SQuAD-style sets say where an answer is by the paragraph (``context``, ``context_start``) in a document
(``doc_id``, its file name without ``.txt``); ``locate_gold`` finds that paragraph in the article as the
index cleaned it, so the metrics can compare it with the retrieved passages' offsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.types import IndexedArticle

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class QuestionSet:
    name: str
    questions: Path
    corpus: Path


class SetSpecError(ValueError):
    """A ``--set`` value that is not ``NAME=QUESTIONS:CORPUS``."""


def parse_set_spec(spec: str) -> QuestionSet:
    """``NAME=QUESTIONS:CORPUS`` -> QuestionSet. The corpus is what follows the last colon, so a
    questions path may hold one; relative paths are taken from the current folder."""
    name, equals, paths = spec.partition("=")
    questions, colon, corpus = paths.rpartition(":")
    name, questions, corpus = name.strip(), questions.strip(), corpus.strip()
    if not equals or not colon or not name or not questions or not corpus:
        raise SetSpecError(f"--set {spec!r}: expected NAME=QUESTIONS:CORPUS, e.g. news=q.jsonl:articles/")
    return QuestionSet(name, Path(questions), Path(corpus))


def default_sets(shared_data: Path = SHARED_DATA) -> tuple[list[QuestionSet], list[str]]:
    """The sets run by default, and a line for each one that is not available here."""
    sets = [
        QuestionSet("shipped", HERE / "questions.jsonl", REPO / "corpus"),
        QuestionSet("reworded", HERE / "reworded.jsonl", REPO / "corpus"),
    ]
    notes = []
    squad = shared_data / "wiki-squad2"
    if (squad / "questions.jsonl").is_file() and (squad / "docs").is_dir():
        sets.append(QuestionSet("wiki-squad2", squad / "questions.jsonl", squad / "docs"))
    else:
        notes.append(f"wiki-squad2: skipped, {squad} is absent")
    return sets, notes


def select(sets: Iterable[QuestionSet], only: list[str]) -> list[QuestionSet]:
    chosen = [s for s in sets if not only or s.name in only]
    missing = set(only) - {s.name for s in chosen}
    if missing:
        raise SetSpecError(f"--only: no set named {', '.join(sorted(missing))}")
    return chosen


def load_questions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def locate_gold(question: dict[str, Any], articles: Iterable[IndexedArticle]) -> list[Any] | None:
    """``[article_id, start, end]`` of the question's gold paragraph in the cleaned article text, or
    None when the question has no ``doc_id`` / ``context`` (unanswerable, or evidence-style)."""
    doc_id, context = question.get("doc_id"), question.get("context")
    if not doc_id or not context:
        return None
    article = next((a for a in articles if Path(a.source).stem == doc_id), None)
    if article is None:
        return None
    text = article.text
    hint = int(question.get("context_start") or 0)
    starts = []
    at = text.find(context)
    while at >= 0:
        starts.append(at)
        at = text.find(context, at + 1)
    if starts:
        start = min(starts, key=lambda s: abs(s - hint))
        return [article.id, start, start + len(context)]
    # Cleaning changed the paragraph (white space, a removed line): fall back to its first 80
    # characters, and the paragraph's length from there.
    head = context[:80]
    at = text.find(head)
    if at >= 0:
        return [article.id, at, min(len(text), at + len(context))]
    return None
