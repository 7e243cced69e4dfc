"""The evaluation's scoring and calibration, on hand-made outcomes whose right figures are known."""

from __future__ import annotations

import json
import re
from pathlib import Path

from evals.metrics import Outcome, score_outcome, summarize
from evals.run import HERE, calibrate, load_questions
from evals.synth import MarkovWriter, source_sentences, write_distractor_corpus
from tests.conftest import CORPUS


def outcome(answerable: bool, found: bool, text: str, passages: list[str], seconds: float = 0.01) -> Outcome:
    return Outcome(
        id="q",
        type="factoid" if answerable else "unanswerable",
        answerable=answerable,
        found=found,
        text=text,
        passages=passages,
        quotes=[text] if found else [],
        invalid_citations=0,
        seconds=seconds,
    )


def test_scores_rank_containment_and_support() -> None:
    question = {"answers": ["200 kilometres"], "evidence": ["only 200 kilometres between"]}
    scored = score_outcome(
        outcome(
            True,
            True,
            "There is only 200 kilometres between them. [1]",
            ["unrelated", "There is only 200   kilometres between them."],
        ),
        question,
    )
    assert scored.first_support_rank == 2 and scored.contains_answer and scored.cited_support
    assert scored.words == 7


def test_summary_and_calibration() -> None:
    good = score_outcome(
        outcome(True, True, "Oslo [1]", ["Oslo hosts"]), {"answers": ["Oslo"], "evidence": ["Oslo"]}
    )
    missed = score_outcome(outcome(True, False, "", ["x"]), {"answers": ["Rome"], "evidence": ["Rome"]})
    abstained = score_outcome(outcome(False, False, "", ["x"]), {"answers": [], "evidence": []})
    summary = summarize([good, missed, abstained])
    assert summary.hit_at_1 == 0.5 and summary.mrr == 0.5
    assert summary.answered_when_answerable == 0.5 and summary.abstained_when_unanswerable == 1.0
    threshold, rate = calibrate([good, missed, abstained], [0.9, 0.5, 0.3], min_answered=0.5)
    assert threshold == 0.5 and rate == 1.0


def test_question_set_is_well_formed_and_its_evidence_is_verbatim() -> None:
    from rag.articles import load_articles

    texts = [a.text for a in load_articles([CORPUS], max_bytes=10_000_000)[0]]
    questions = load_questions(HERE / "questions.jsonl")
    ids = {q["id"] for q in questions}
    assert len(questions) >= 60 and len(ids) == len(questions)
    types = {q["type"] for q in questions}
    assert types == {"factoid", "numeric", "multi_source", "unanswerable", "follow_up"}
    for q in questions:
        assert all(any(e in t for t in texts) for e in q["evidence"]), q["id"]
        assert bool(q["answers"]) == (q["type"] != "unanswerable"), q["id"]
        if q["type"] == "follow_up":
            assert q["previous"] in ids
        if q["type"] == "multi_source":
            sources = {i for e in q["evidence"] for i, t in enumerate(texts) if e in t}
            assert len(sources) >= 2, q["id"]
    json.dumps(questions)


def test_benchmark_distractors_restate_no_source_sentence_and_name_no_source_name(tmp_path: Path) -> None:
    """The benchmark's premise: among thousands of distractors the shipped questions keep one right
    answer. A distractor may share the sources' vocabulary, not a whole statement or a name."""
    writer = MarkovWriter(source_sentences(CORPUS))
    distractors = " ".join(p.read_text() for p in write_distractor_corpus(CORPUS, tmp_path, 300))
    assert len(distractors.split()) > 300 * 250  # news-length articles
    words = {w.lower() for w in re.findall(r"[\w’'-]+", distractors)}
    assert not words & writer.names
    for sentence in writer.source:
        if len(sentence.split()) < 10:
            continue
        tokens = sentence.split()
        masked = [r"\S+" if re.match(r"[A-Z\d]", t) else re.escape(t) for t in tokens[1:]]
        assert not re.search(r"\s+".join([re.escape(tokens[0]), *masked]), distractors), sentence
