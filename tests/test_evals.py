"""The evaluation's scoring and calibration, on hand-made outcomes whose right figures are known."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from evals.curve import Graded, area_under, curve_json, point_at, sweep
from evals.metrics import Outcome, contains_answer, judge, normalize_answer, score_outcome, summarize
from evals.run import HERE, calibrate, load_questions
from evals.sets import QuestionSet, SetSpecError, default_sets, locate_gold, parse_set_spec, select
from evals.synth import MarkovWriter, source_sentences, write_distractor_corpus
from rag.types import IndexedArticle
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


def test_the_reworded_set_is_verbatim_in_its_answers_and_shares_no_wording_with_the_text() -> None:
    """Its premise: every answer and evidence is in the cleaned text of one article, and no answerable
    question repeats five words in a row of any article, names included (it measures questions worded
    away from the text; its unanswerable ones may echo the text, as adversarial questions do)."""
    from rag.articles import load_articles

    texts = [a.text for a in load_articles([CORPUS], max_bytes=10_000_000)[0]]
    five_grams = {
        tuple(words[i : i + 5])
        for t in texts
        for words in [re.findall(r"\w+", t.lower())]
        for i in range(len(words) - 4)
    }
    questions = load_questions(HERE / "reworded.jsonl")
    assert len(questions) >= 60 and len({q["id"] for q in questions}) == len(questions)
    assert sum(not q["answers"] for q in questions) >= 20
    for q in questions:
        assert bool(q["answers"]) == (q["type"] != "unanswerable"), q["id"]
        for e in q["evidence"]:
            assert any(e in t for t in texts), q["id"]
            assert any(a in e for a in q["answers"]), q["id"]
        words = re.findall(r"\w+", q["question"].lower())
        if q["answers"]:
            assert not {tuple(words[i : i + 5]) for i in range(len(words) - 4)} & five_grams, q["id"]


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


# --- answer normalisation, question sets, the risk-coverage sweep ---------------------------------


def test_answers_are_normalised_as_squad_does_and_matched_as_whole_words() -> None:
    assert normalize_answer("The  Treaty of Rome, 1957!") == "treaty of rome 1957"
    assert normalize_answer("“Track-two” diplomacy") == "track two diplomacy"
    assert contains_answer("Signed as the Treaty of Rome [1].", ["treaty of Rome"])
    assert contains_answer(
        "However,he noted: for us,Minsk is the best place [1]", ["Minsk is the best place"]
    )
    assert contains_answer("Serbia’s foreign minister", ["Serbia"])
    assert not contains_answer("thus it went", ["US"])
    assert not contains_answer("in 19790 [1]", ["1979"])
    assert not contains_answer("The articles do not say.", [])
    # a citation marker is not a number in the answer
    assert not contains_answer("It happened then. [1]", ["1"])


def test_squad_style_questions_are_scored_by_the_gold_paragraph() -> None:
    question = {
        "id": "s1",
        "question": "When was the second oil crisis?",
        "answers": ["1979"],
        "gold": ["oil", 100, 400],
    }
    elsewhere = ("oil", 900, 1200)  # holds the answer, but not where the question was written
    at_gold = ("oil", 350, 1000)
    scored = judge(
        question,
        found=True,
        text="followed by the 1979 oil crisis [1]",
        passages=["the 1979 oil crisis, again", "followed by the 1979 oil crisis"],
        passage_locations=[elsewhere, at_gold],
        quotes=["followed by the 1979 oil crisis"],
        quote_locations=[at_gold],
        invalid_citations=0,
        seconds=0.01,
    )
    assert scored.type == "factoid" and scored.answerable
    assert scored.first_support_rank == 2 and scored.contains_answer and scored.cited_support
    unanswerable = judge(
        {"id": "s2", "question": "?", "answers": [], "doc_id": None},
        found=False,
        text="The articles do not say.",
        passages=["x"],
        quotes=[],
        invalid_citations=0,
        seconds=0.01,
    )
    assert unanswerable.type == "unanswerable" and not unanswerable.answerable


def test_the_gold_paragraph_is_found_in_the_cleaned_text() -> None:
    text = (
        "Title\nA first paragraph.\nThe gold paragraph, said twice.\nMore.\nThe gold paragraph, said twice."
    )
    article = IndexedArticle(
        id="doc-a",
        title="Title",
        text=text,
        source="/data/docs/Doc_A.txt",
        content_hash="h",
        chunks=[],
        sentences=[],
    )
    context = "The gold paragraph, said twice."
    question = {"doc_id": "Doc_A", "context": context, "context_start": 70}
    assert locate_gold(question, [article]) == ["doc-a", text.rindex(context), len(text)]
    assert locate_gold({**question, "context_start": 0}, [article])[1] == text.index(context)
    assert locate_gold({**question, "doc_id": "Other"}, [article]) is None
    assert locate_gold({"doc_id": None, "context": None}, [article]) is None


def test_set_specs_are_parsed_and_checked(tmp_path: Path) -> None:
    spec = parse_set_spec("news=evals/news/q.jsonl:/data/news articles/")
    assert spec == QuestionSet("news", Path("evals/news/q.jsonl"), Path("/data/news articles/"))
    assert parse_set_spec("x=C:/q.jsonl:docs").questions == Path(
        "C:/q.jsonl"
    )  # the corpus follows the last colon
    for bad in ["news", "news=q.jsonl", "=q.jsonl:docs", "news=:docs", "news=q.jsonl:"]:
        with pytest.raises(SetSpecError):
            parse_set_spec(bad)
    sets, notes = default_sets(shared_data=tmp_path)  # no wiki-squad2 here
    assert sets[0].name == "shipped" and "wiki-squad2" not in {s.name for s in sets}
    assert any(n.startswith("wiki-squad2: skipped") for n in notes)
    squad = tmp_path / "wiki-squad2"
    (squad / "docs").mkdir(parents=True)
    (squad / "questions.jsonl").write_text("{}\n")
    sets, _ = default_sets(shared_data=tmp_path)
    assert QuestionSet("wiki-squad2", squad / "questions.jsonl", squad / "docs") in sets
    assert [s.name for s in select(sets, ["wiki-squad2"])] == ["wiki-squad2"]
    with pytest.raises(SetSpecError):
        select(sets, ["nope"])


def test_risk_coverage_sweep_on_hand_made_outcomes() -> None:
    graded = [
        Graded(0.9, True, True),
        Graded(0.8, True, False),
        Graded(0.7, False, False),
        Graded(0.6, True, True),
        Graded(0.2, False, False),
        Graded(0.1, True, False),
    ]
    points = sweep(graded)
    assert [p.threshold for p in points] == [0.1, 0.2, 0.6, 0.7, 0.8, 0.9, math.inf]
    everything = points[0]
    assert everything.coverage == 1.0 and everything.accuracy == 0.5 and everything.abstained == 0.0
    at_06 = point_at(graded, 0.6)
    assert at_06.coverage == 0.75 and at_06.accuracy == pytest.approx(2 / 3) and at_06.abstained == 0.5
    at_08 = point_at(graded, 0.8)
    assert (at_08.coverage, at_08.accuracy, at_08.abstained) == (0.5, 0.5, 1.0)
    assert points[-1].coverage == 0.0 and points[-1].accuracy is None and points[-1].abstained == 1.0
    # only the order of the confidences matters: any increasing rescaling gives the same curve
    rescaled = sweep([g._replace(confidence=math.log(g.confidence) * 7 - 3) for g in graded])
    assert [(p.coverage, p.accuracy, p.abstained) for p in rescaled] == [
        (p.coverage, p.accuracy, p.abstained) for p in points
    ]
    assert area_under(points) is not None and 0 < area_under(points) <= 1  # type: ignore[operator]
    written = curve_json(points, at_06)
    assert written["points"][-1]["threshold"] is None and written["operating_point"]["threshold"] == 0.6
    json.dumps(written)
