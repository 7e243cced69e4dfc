"""Fit how the answer step turns its evidence into a confidence (`make train`, after the reranker):
- for the reranker, a logistic model of "this sentence holds the answer" on the reranker's logit, the
  first pass's score, the question's coverage and an unmatched negation (``rag/negation.py``), fitted on
  sentences the real pipeline proposes, and the abstention threshold;
- for the hand-set scorer, the penalty for an unmatched negation, in its confidence's own units.

The reranker was trained within one paragraph; in the pipeline its contenders come from five passages of
several articles, which it cannot rank against each other (it does not see the passage's rank), and it
has never seen a question the articles do not answer. So the fit runs the real pipeline over the
``valid`` articles of `../shared/data/squad11-train` (CC BY-SA 4.0, Rajpurkar et al. 2016; articles the
reranker was not fitted on) and asks four kinds of question:
- their own questions (answerable; a sentence is right when it holds the answer);
- the same with a name or number swapped for another of the article's, or for one it never uses
  (unanswerable, like SQuAD 2.0's and like on-topic questions about someone the articles never name);
- the same negated ("Who was …" -> "Who wasn't …") when the answer sentence negates nothing
  (unanswerable, like SQuAD 2.0's);
- ``train`` questions about articles that are not in the index (unanswerable: a retrieval miss).
Half the articles fit the models; the threshold is chosen on the other half: the highest that answers
``--answered`` of its answerable questions. Writes the reranker card's "calibration" and
``rag/models/answer_confidence.json``.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from evals.run import NO_ABSTENTION
from evals.train_reranker import DATA, NAME_OR_NUMBER, SEED, read_jsonl_gz, swapped
from rag.answer import CONFIDENCE_CARD, Sentence, fitted_negation_penalty
from rag.chunking import sentence_spans
from rag.negation import negate, unmatched_negation
from rag.pipeline import Pipeline
from rag.rerank import CARD_FILE, AnswerReranker, RerankerCard, load_reranker
from rag.settings import Settings

WORK = Path(tempfile.gettempdir()) / "rag-fit-confidence"
KINDS = ("answerable", "swap", "stranger", "negated", "miss")


@dataclass
class Asked:
    """One question through the pipeline: its contenders' features and which hold the answer."""

    question: str
    kind: str  # one of KINDS
    doc_id: str
    features: np.ndarray  # contenders x (logit, first pass, coverage, unmatched negation)
    right: np.ndarray  # contenders: holds the answer


@dataclass
class Answered:
    """One question answered by the hand-set scorer with abstention off."""

    kind: str
    doc_id: str
    confidence: float  # without the negation penalty
    unmatched: bool  # a negated question, a quote that negates nothing
    right: bool


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def valid_pipeline(work: Path, data: Path) -> tuple[Pipeline, dict[str, str]]:
    """The ``valid`` articles ingested into an index under ``work`` (reused when already built)."""
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    docs = {d["doc_id"]: d["text"] for d in read_jsonl_gz(data / "docs.jsonl.gz")}
    valid = {q["doc_id"] for q in read_jsonl_gz(data / "questions.jsonl.gz") if q["split"] == "valid"}
    for doc_id in sorted(valid):
        path = corpus / f"{doc_id}.txt"
        if not path.exists():
            path.write_text(f"---\ntitle: {doc_id}\n---\n{docs[doc_id]}", encoding="utf-8")
    settings = Settings(corpus_dir=corpus, index_dir=work / "index", progress=False)
    pipeline = Pipeline(settings)
    started = time.perf_counter()
    pipeline.ingest()
    print(f"index: {len(valid)} articles in {time.perf_counter() - started:.0f} s", flush=True)
    return pipeline, {doc_id: docs[doc_id] for doc_id in valid}


def contenders(pipeline: Pipeline, question: str) -> tuple[list[Sentence], np.ndarray, float]:
    """The sentences the answer step would re-read, their first-pass scores, and the question's
    coverage by the leading passages, as a query computes them."""
    candidates, coverage = pipeline.draft_evidence(question)
    answerer = pipeline.answerer
    sentences = answerer.candidate_sentences(candidates[: pipeline.settings.top_k], pipeline.index.articles)
    if not sentences:
        return [], np.zeros(0), coverage
    order, first, _ = answerer.first_order(question, sentences)
    contenders = order[: answerer.rescored]
    return [sentences[i] for i in contenders], first[contenders], coverage


def ask(pipeline: Pipeline, question: str, kind: str, doc_id: str, answers: list[str]) -> Asked | None:
    reranker = pipeline.answerer.reranker
    assert reranker is not None
    sentences, first, coverage = contenders(pipeline, question)
    if not sentences:
        return None
    texts = [s.text for s in sentences]
    logits = reranker.logits(question, texts)
    right = np.array([holds_answer([t], answers) for t in texts])
    unmatched = [unmatched_negation(question, t) for t in texts]
    features = np.column_stack([logits, first, np.full(len(texts), coverage), unmatched])
    return Asked(question, kind, doc_id, features, right.astype(bool))


def holds_answer(texts: list[str], answers: list[str]) -> bool:
    return any(norm(a) in norm(t) for a in answers for t in texts)


def answer_hand_set(pipeline: Pipeline, q: dict[str, Any]) -> Answered:
    """The hand-set scorer's answer (``pipeline`` answers everything and applies no negation penalty)."""
    answer = pipeline.query(q["question"])
    quotes = [c.quote for c in answer.citations]
    return Answered(
        q["kind"],
        q["doc_id"],
        answer.confidence,
        unmatched_negation(q["question"], " ".join(quotes)),
        holds_answer(quotes, q["answers"]),
    )


def questions_of(
    data: Path, texts: dict[str, str], per_article: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Up to ``per_article`` questions of each valid article (those that negate of themselves among
    them at their natural rate, so that the threshold answers a natural mix), with twins where they can
    be made: a name or number swapped for another of the article's, or for one the article never uses
    (a stranger: "What did the Pope say …" of an article without him), and negated; and questions
    about articles that are not indexed."""
    rows = [q for q in read_jsonl_gz(data / "questions.jsonl.gz") if q["offset_method"] == "unique"]
    rng.shuffle(rows)
    names = {doc_id: sorted(set(NAME_OR_NUMBER.findall(text))) for doc_id, text in texts.items()}
    everywhere = sorted({n for found in names.values() for n in found})
    taken: dict[str, int] = {}
    chosen: list[dict[str, Any]] = []
    misses = []
    for row in rows:
        doc_id = row["doc_id"]
        if doc_id not in texts:
            misses.append(row)
            continue
        if taken.get(doc_id, 0) >= per_article:
            continue
        taken[doc_id] = taken.get(doc_id, 0) + 1
        chosen.append(
            {"question": row["question"], "kind": "answerable", "doc_id": doc_id, "answers": row["answers"]}
        )
        text, start = texts[doc_id], row["answer_start"]
        spans = sentence_spans(text, row["context_start"], row["context_end"])
        sentence = next((text[s.start : s.end] for s in spans if s.start <= start < s.end), "")
        changed = swapped(row["question"], sentence, names[doc_id], rng)
        if changed:
            chosen.append({"question": changed, "kind": "swap", "doc_id": doc_id, "answers": []})
        own = set(names[doc_id])
        strangers = [n for n in rng.sample(everywhere, _STRANGERS) if n not in own]
        changed = swapped(row["question"], sentence, strangers, rng)
        if changed:
            chosen.append({"question": changed, "kind": "stranger", "doc_id": doc_id, "answers": []})
        negated = negate(row["question"])
        if negated and unmatched_negation(negated, sentence):
            chosen.append({"question": negated, "kind": "negated", "doc_id": doc_id, "answers": []})
    # A miss is grouped with an indexed article only to fall on one side of the fit / threshold split.
    articles = sorted(texts)
    for i, row in enumerate(misses[: len(chosen) // 3]):
        chosen.append(
            {
                "question": row["question"],
                "kind": "miss",
                "doc_id": articles[i % len(articles)],
                "answers": [],
            }
        )
    return chosen


# Names of other articles a stranger is drawn from, per question.
_STRANGERS = 200

Weights = tuple[float, float, float, float, float]  # logit, first pass, coverage, negation, shift


def fit_sentence_model(asked: list[Asked]) -> Weights:
    """Logistic regression of "holds the answer" on (logit, first pass, coverage, unmatched negation)
    over every contender."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([a.features for a in asked])
    y = np.concatenate([a.right for a in asked]).astype(int)
    fit = LogisticRegression(C=1e6).fit(x, y)
    scale, first, coverage, negation = (float(w) for w in fit.coef_[0])
    return scale, first, coverage, negation, float(fit.intercept_[0])


def fit_negation_penalty(answered: list[Answered]) -> float:
    """The hand-set confidence's penalty for an unmatched negation: a logistic regression of "the answer
    is right" on (confidence, unmatched), its two weights' ratio (how far along the confidence an
    unmatched negation moves the odds)."""
    from sklearn.linear_model import LogisticRegression

    x = np.array([[a.confidence, a.unmatched] for a in answered], dtype=float)
    y = np.array([a.right for a in answered], dtype=int)
    fit = LogisticRegression(C=1e6).fit(x, y)
    confidence, unmatched = (float(w) for w in fit.coef_[0])
    return max(0.0, -unmatched / confidence)


def hand_set_report(answered: list[Answered], threshold: float, penalty: float) -> dict[str, float]:
    """What the hand-set scorer does at its threshold with the given penalty, by kind of question."""
    report: dict[str, float] = {}
    for kind in KINDS:
        rows = [a for a in answered if a.kind == kind]
        passed = [a for a in rows if a.confidence - penalty * a.unmatched >= threshold]
        if kind == "answerable":
            report["answered when answerable"] = round(len(passed) / max(1, len(rows)), 4)
            report["right when answered"] = round(sum(a.right for a in passed) / max(1, len(passed)), 4)
        else:
            report[f"abstained ({kind})"] = round(1 - len(passed) / max(1, len(rows)), 4)
        report[f"questions ({kind})"] = len(rows)
    return report


def best(asked: Asked, weights: Weights) -> tuple[float, bool]:
    """The probability of the contender the answer step would choose, and whether it holds the answer."""
    z = asked.features @ np.array(weights[:4]) + weights[4]
    i = int(np.argmax(z))
    return float(1 / (1 + np.exp(-z[i]))), bool(asked.right[i])


def choose_threshold(asked: list[Asked], weights: Weights, answered: float) -> dict[str, float]:
    """The highest threshold that answers ``answered`` of the answerable questions, and what it gives."""
    scored = [(a.kind, *best(a, weights)) for a in asked]
    answerable = sorted((p for kind, p, _ in scored if kind == "answerable"), reverse=True)
    threshold = answerable[max(0, int(np.ceil(answered * len(answerable))) - 1)]
    report: dict[str, float] = {"threshold": round(threshold, 4)}
    for kind in KINDS:
        rows = [(p, right) for k, p, right in scored if k == kind]
        passed = [right for p, right in rows if p >= threshold]
        if kind == "answerable":
            report["answered when answerable"] = round(len(passed) / len(rows), 4)
            report["right when answered"] = round(sum(passed) / max(1, len(passed)), 4)
            report["right, abstention off"] = round(sum(r for _, r in rows) / len(rows), 4)
        else:
            report[f"abstained ({kind})"] = round(1 - len(passed) / max(1, len(rows)), 4)
        report[f"questions ({kind})"] = len(rows)
    return report


def calibrate_reranker(
    pipeline: Pipeline, questions: list[dict[str, Any]], fitting: set[str], answered: float
) -> None:
    """Fit the reranker's calibration on the ``fitting`` articles' questions, choose its threshold on the
    others', and write them into its card."""
    settings = pipeline.settings
    card = RerankerCard.read(calibrated=False)  # the fit reads logits only
    pipeline.answerer.reranker = AnswerReranker(settings.model_cache_dir, settings.embedding_workers, card)
    asked = [
        a
        for q in questions
        if (a := ask(pipeline, q["question"], q["kind"], q["doc_id"], q["answers"])) is not None
    ]
    pipeline.answerer.reranker = None
    weights = fit_sentence_model([a for a in asked if a.doc_id in fitting])
    report = choose_threshold([a for a in asked if a.doc_id not in fitting], weights, answered)
    print(json.dumps({"reranker weights": weights, **report}, indent=2), flush=True)
    written = json.loads(CARD_FILE.read_text(encoding="utf-8"))
    written["calibration"] = {
        "scale": round(weights[0], 6),
        "first_pass_weight": round(weights[1], 6),
        "coverage_weight": round(weights[2], 6),
        "negation_weight": round(weights[3], 6),
        "shift": round(weights[4], 6),
        "threshold": report.pop("threshold"),
        "chosen to answer": answered,
        "at the threshold (held-out squad11-train valid articles, through the pipeline)": report,
        "command": "make train (evals/fit_confidence.py)",
    }
    CARD_FILE.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    load_reranker.cache_clear()


def calibrate_hand_set(settings: Settings, questions: list[dict[str, Any]], fitting: set[str]) -> None:
    """Fit the hand-set scorer's negation penalty on the ``fitting`` articles' questions, report it on
    the others' at the hand-set threshold, and write it to ``rag/models/answer_confidence.json``."""
    unpenalised = {"min_answer_score": NO_ABSTENTION, "negation_penalty": 0.0}
    pipeline = Pipeline(Settings(**{**settings.model_dump(exclude_unset=True), **unpenalised}))
    answered = [answer_hand_set(pipeline, q) for q in questions]
    penalty = fit_negation_penalty([a for a in answered if a.doc_id in fitting])
    held_out = [a for a in answered if a.doc_id not in fitting]
    threshold = settings.hand_set_min_answer_score
    card = {
        "hand_set": {
            "negation_penalty": round(penalty, 4),
            "at the hand-set threshold (held-out squad11-train valid articles, through the pipeline)": {
                "threshold": threshold,
                "with the penalty": hand_set_report(held_out, threshold, penalty),
                "without it": hand_set_report(held_out, threshold, 0.0),
            },
        },
        "credit": "Fitted on questions from SQuAD v1.1 train (Rajpurkar et al., 2016, "
        "https://rajpurkar.github.io/SQuAD-explorer/), English Wikipedia text, CC BY-SA 4.0.",
        "command": "make train (evals/fit_confidence.py)",
    }
    print(json.dumps(card["hand_set"], indent=2), flush=True)
    CONFIDENCE_CARD.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    fitted_negation_penalty.cache_clear()


def main(
    per_article: Annotated[int, typer.Option(help="Questions asked of each valid article.")] = 40,
    answered: Annotated[float, typer.Option(help="Share of answerable questions the threshold keeps.")] = 0.9,
    data: Annotated[Path, typer.Option(help="The squad11-train folder.")] = DATA,
    work: Annotated[Path, typer.Option(help="Where the valid articles' index is kept.")] = WORK,
) -> None:
    started = time.perf_counter()
    pipeline, texts = valid_pipeline(work, data)
    rng = random.Random(SEED)
    questions = questions_of(data, texts, per_article, rng)
    articles = sorted(texts)
    rng.shuffle(articles)
    fitting = set(articles[: len(articles) // 2])
    calibrate_reranker(pipeline, questions, fitting, answered)
    print(f"reranker calibrated ({time.perf_counter() - started:.0f} s)", flush=True)
    calibrate_hand_set(pipeline.settings, questions, fitting)
    print(f"wrote {CARD_FILE.name} and {CONFIDENCE_CARD.name} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    typer.run(main)
