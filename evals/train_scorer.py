"""Fit the answer scorer (`make train`) and validate it (`--validate`).

Training data comes from this pipeline run over SQuAD v1.1 train articles (`../shared/data/squad11-train`,
CC BY-SA 4.0, Rajpurkar et al. 2016): the articles are ingested into a temporary index, each sampled
question goes through the real retrieval and candidate-sentence step, and the features are computed by
the code that computes them at query time (`rag/answer_features.py`). A sentence is labelled 1 when it
holds the gold answer span. Each question is asked three ways: as it is; with its article's passages
removed (a retrieval miss); with its gold paragraph removed (the answer withheld, as in the synthetic
negatives). Three logistic models are fitted (scikit-learn, fixed seeds) and written as plain numbers to
`rag/models/answer_scorer.json`:
- ``sentence``: every candidate sentence, from features that cost no model run;
- ``leader``: the leading sentences again, with the cosine of their stand-alone embedding;
- ``evidence``: whether the chosen quote answers at all (Answer.confidence), over answerable questions
  and the two kinds of negatives.
The abstention threshold is chosen on the ``valid`` split (other articles than ``train``).

`--validate` runs the real `Pipeline` over `../shared/data/wiki-squad2` (300 answerable, 300 adversarial
unanswerable questions) and over `evals/questions.jsonl` with the shipped corpus, and prints the figures
`make eval` reports.
"""

from __future__ import annotations

import gzip
import json
import pickle
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from rag.answer import ExtractiveAnswerer, Ranking, Sentence
from rag.answer_features import (
    EVIDENCE_FEATURES,
    LEADER_FEATURES,
    SENTENCE_FEATURES,
    Question,
    leader_features,
    sentence_features,
)
from rag.answer_model import MODEL_FILE, AnswerModel, Logistic
from rag.articles import article_id_for, clean_text
from rag.embeddings import Embedder
from rag.pipeline import Pipeline
from rag.retrieve import Candidate
from rag.settings import Settings
from rag.types import IndexedArticle

if TYPE_CHECKING:
    from evals.metrics import Outcome

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data"
SEED = 16
WORK = Path(tempfile.gettempdir()) / "rag-train-squad11"
CREDIT = (
    "Fitted on questions and articles of SQuAD v1.1 (Rajpurkar et al., 2016, https://rajpurkar.github.io/"
    "SQuAD-explorer/), English Wikipedia text, CC BY-SA 4.0; these weights are derived from it and are "
    "shared under the same licence."
)


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def contains_gold(text: str, answers: list[str]) -> bool:
    hay = norm(text)
    return any(norm(a) in hay for a in answers if a)


class CachedEmbedder:
    """The real embedder with an unbounded cache: training asks for the same sentences many times."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.cache: dict[str, np.ndarray] = {}

    def embed_cached(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            for text, vector in zip(missing, self.embedder.embed(missing), strict=True):
                self.cache[text] = vector
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.embedder.dimension))

    def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed_cached([text])[0]
        return vector


@dataclass
class Case:
    """One question asked one way: as it is ("hit"), or with its article or paragraph removed."""

    question: str
    answers: list[str]
    way: str  # hit | miss | para | swap
    split: str
    candidates: list[Candidate]
    coverage: float
    gold: tuple[str, int, int]  # article id, answer start, answer end
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SENTENCE_FEATURES))))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    leaders: list[int] = field(default_factory=list)
    leader_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LEADER_FEATURES))))


def read_jsonl_gz(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def squad_pipeline(work: Path, data: Path) -> tuple[Pipeline, dict[str, str]]:
    """The SQuAD train articles ingested into an index under ``work`` (reused when already built)."""
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    for doc in read_jsonl_gz(data / "squad11-train" / "docs.jsonl.gz"):
        path = corpus / f"{doc['doc_id']}.txt"
        texts[article_id_for(path)] = doc["text"]
        if not path.exists():
            path.write_text(f"---\ntitle: {doc['doc_id']}\n---\n{doc['text']}", encoding="utf-8")
    settings = Settings(corpus_dir=corpus, index_dir=work / "index", progress=False)
    pipeline = Pipeline(settings)
    started = time.perf_counter()
    report = pipeline.ingest()
    state = "built" if report.added else "reused"
    seconds = time.perf_counter() - started
    print(f"index: {len(pipeline.index.articles)} articles, {state} in {seconds:.0f} s", flush=True)
    return pipeline, texts


def locate(q: dict[str, Any], raw: str, cleaned: str) -> dict[str, Any] | None:
    """The question with its offsets moved into the cleaned article text (cleaning normalises white
    space and drops boilerplate-looking lines): its paragraph found again, and the answer in it."""
    if raw == cleaned:
        return q
    paragraph = clean_text(raw[q["context_start"] : q["context_end"]])
    start = cleaned.find(paragraph) if paragraph else -1
    answer = q["answers"][0]
    inside = paragraph.find(answer)
    if start < 0 or inside < 0 or paragraph.find(answer, inside + 1) >= 0:
        return None
    return q | {
        "context_start": start,
        "context_end": start + len(paragraph),
        "answer_start": start + inside,
    }


def ask(pipeline: Pipeline, q: dict[str, Any], article_id: str, swapped: str | None) -> list[Case]:
    """The question as it is, with its article removed, with its paragraph removed, and with one of its
    names swapped for another question's."""
    retriever, top_k = pipeline.retriever, max(pipeline.settings.top_k, 5)
    start = q["answer_start"]
    gold = (article_id, start, start + len(q["answers"][0]))
    common = {"question": q["question"], "answers": q["answers"], "split": q["split"], "gold": gold}

    def case(way: str, candidates: list[Candidate]) -> Case:
        coverage = retriever.coverage(q["question"], [c.chunk.text for c in candidates[:3]])
        return Case(way=way, candidates=candidates, coverage=coverage, **common)

    hit = retriever.search(q["question"], top_k)
    wide = retriever.search(q["question"], 3 * top_k)
    miss = [c for c in wide if c.chunk.article_id != article_id][:top_k]
    para = [
        c
        for c in wide
        if c.chunk.article_id != article_id
        or c.chunk.end <= q["context_start"]
        or c.chunk.start >= q["context_end"]
    ][:top_k]
    cases = [case("hit", hit), case("miss", miss), case("para", para)]
    if swapped is not None:  # the same question about another name: what it asks is not in the articles
        other = retriever.search(swapped, top_k)
        cases.append(
            Case(
                way="swap",
                candidates=other,
                coverage=retriever.coverage(swapped, [c.chunk.text for c in other[:3]]),
                **(common | {"question": swapped, "answers": []}),
            )
        )
    return cases


_NAME = re.compile(r"(?<!^)\b[A-Z][a-z]{2,}\b")


def swap_name(question: str, names: list[str], rng: random.Random) -> str | None:
    """The question with one of its names replaced by a name from another question, e.g. "Who is
    Ukraine's foreign minister?" from "Who is Serbia's foreign minister?"."""
    own = [m for m in _NAME.finditer(question)]
    if not own:
        return None
    target = rng.choice(own)
    replacement = rng.choice(names)
    if replacement.lower() in question.lower():
        return None
    return question[: target.start()] + replacement + question[target.end() :]


def untrained(names: tuple[str, ...]) -> Logistic:
    n = len(names)
    return Logistic(names, np.zeros(n), np.ones(n), np.zeros(n), 0.0)


def sentence_rows(
    answerer: ExtractiveAnswerer,
    case: Case,
    articles: Mapping[str, IndexedArticle],
    idf: Callable[[str], float],
) -> tuple[Question, list[Sentence]]:
    """Features of the case's candidate sentences (as `ExtractiveAnswerer.rank` computes them) and labels."""
    parsed = Question.parse(case.question, idf)
    sentences = answerer.candidate_sentences(case.candidates[: answerer.settings.top_k], articles)
    if not sentences:
        return parsed, sentences
    vector = answerer.embedder.embed_query(case.question)
    cos = answerer.index.sentence_vectors([(s.article.id, s.index) for s in sentences]) @ vector
    top = max(s.candidate.fused for s in sentences)
    case.rows = sentence_features(parsed, [answerer.context(s, top) for s in sentences], cos)
    article_id, start, end = case.gold
    case.labels = np.array(
        [float(s.article.id == article_id and s.span.start <= start and end <= s.span.end) for s in sentences]
    )
    return parsed, sentences


def fit(rows: np.ndarray, labels: np.ndarray, names: tuple[str, ...], c: float = 1.0) -> Logistic:
    from sklearn.linear_model import LogisticRegression

    mean = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale[scale < 1e-9] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=SEED)
    model.fit((rows - mean) / scale, labels)
    return Logistic(names, mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def fit_ranker(
    rows: list[np.ndarray], labels: list[np.ndarray], names: tuple[str, ...], pairwise: bool
) -> Logistic:
    """A sentence model: pointwise (each sentence alone), or pairwise (the answer's sentence against each
    other candidate of its question: the weights learn what tells them apart), then calibrated to a
    probability by a one-feature logistic fit over the pointwise labels."""
    pointwise = fit(np.vstack(rows), np.concatenate(labels), names)
    if not pairwise:
        return pointwise
    from sklearn.linear_model import LogisticRegression

    mean, scale = pointwise.mean, pointwise.scale
    diffs = []
    for r, y in zip(rows, labels, strict=True):
        z = (r - mean) / scale
        for p in np.flatnonzero(y == 1):
            for n in np.flatnonzero(y == 0):
                diffs.append(z[p] - z[n])
    x = np.vstack(diffs)
    x = np.vstack([x, -x])
    y = np.concatenate([np.ones(len(diffs)), np.zeros(len(diffs))])
    ranker = LogisticRegression(C=1.0, max_iter=2000, fit_intercept=False, random_state=SEED).fit(x, y)
    w = ranker.coef_[0]
    score = np.concatenate([((r - mean) / scale) @ w for r in rows])
    calibration = LogisticRegression(C=1.0, max_iter=2000, random_state=SEED).fit(
        score[:, None], np.concatenate(labels)
    )
    a, b = float(calibration.coef_[0][0]), float(calibration.intercept_[0])
    return Logistic(names, mean, scale, (a * w).astype(np.float64), b)


def accuracy_at_1(cases: list[Case], logits: list[np.ndarray]) -> tuple[float, float]:
    """Share of answerable questions whose top sentence holds the answer: of all, and of those whose
    candidates hold it at all (retrieval aside)."""
    top = [float(case.labels[int(np.argmax(lg))]) for case, lg in zip(cases, logits, strict=True) if len(lg)]
    possible = [
        float(case.labels[int(np.argmax(lg))])
        for case, lg in zip(cases, logits, strict=True)
        if len(lg) and case.labels.any()
    ]
    return float(np.mean(top)), float(np.mean(possible))


def train(
    samples: Annotated[int, typer.Option(help="Train-split questions sampled.")] = 3000,
    valid: Annotated[int, typer.Option(help="Valid-split questions sampled.")] = 1000,
    work: Annotated[Path, typer.Option(help="Where the SQuAD index is built (kept for reuse).")] = WORK,
    data: Annotated[Path, typer.Option()] = DATA,
    out: Annotated[Path, typer.Option()] = MODEL_FILE,
    # The rule `make eval --calibrate` uses: abstain most while answering >= 95% of the answerable.
    target_answered: Annotated[float, typer.Option(help="Share of valid hits answered.")] = 0.95,
    pairwise: Annotated[bool, typer.Option(help="Fit the sentence models on pairs.")] = True,
) -> None:
    started = time.perf_counter()
    pipeline, texts = squad_pipeline(work, data)
    articles = pipeline.index.articles
    questions = []
    for q in read_jsonl_gz(data / "squad11-train" / "questions.jsonl.gz"):
        article_id = article_id_for(Path(f"{q['doc_id']}.txt"))
        if q["offset_method"] == "unique" and article_id in articles:
            located = locate(q, texts[article_id], articles[article_id].text)
            if located is not None:
                questions.append(located)
    rng = random.Random(SEED)
    chosen = rng.sample([q for q in questions if q["split"] == "train"], samples)
    chosen += rng.sample([q for q in questions if q["split"] == "valid"], valid)

    names = sorted({m.group(0) for q in questions for m in _NAME.finditer(q["question"])})
    swaps = [swap_name(q["question"], names, rng) for q in chosen]
    embedder = CachedEmbedder(pipeline.embedder)
    blank = AnswerModel(
        untrained(SENTENCE_FEATURES), untrained(LEADER_FEATURES), untrained(EVIDENCE_FEATURES), {}
    )
    answerer = ExtractiveAnswerer(pipeline.index, embedder, pipeline.settings, blank)  # type: ignore[arg-type]
    idf = pipeline.retriever.sparse_index().idf

    cases: list[Case] = []
    parsed: list[tuple[Question, list[Sentence]]] = []
    cache = work / f"cases-{samples}-{valid}-{SEED}.pickle"
    if cache.exists():  # the features of a previous run with the same sample (delete it after code changes)
        cases, parsed, embedder.cache = pickle.loads(cache.read_bytes())
    else:
        for n, q in enumerate(chosen):
            for case in ask(pipeline, q, article_id_for(Path(f"{q['doc_id']}.txt")), swaps[n]):
                parsed.append(sentence_rows(answerer, case, articles, idf))
                cases.append(case)
            if n % 500 == 0:
                print(f"  {n} questions, {time.perf_counter() - started:.0f} s", flush=True)

    def hits(split: str) -> list[int]:
        return [i for i, c in enumerate(cases) if c.way == "hit" and c.split == split and c.labels.any()]

    train_hits = hits("train")
    sentence = fit_ranker(
        [cases[i].rows for i in train_hits],
        [cases[i].labels for i in train_hits],
        SENTENCE_FEATURES,
        pairwise,
    )

    # Leaders as the query does it: the best `answer_rescore` by the sentence model, embedded alone.
    rescore = max(pipeline.settings.answer_rescore, 1)
    for i, case in enumerate(cases):
        if not len(case.rows):
            continue
        order = [int(j) for j in np.argsort(-sentence.logit(case.rows), kind="stable")]
        case.leaders = order[:rescore]
        sentences = parsed[i][1]
        cos = answerer.stand_alone(case.question, sentences)(case.leaders)
        case.leader_rows = leader_features(case.rows[case.leaders], cos)
    if not cache.exists():
        cache.write_bytes(pickle.dumps((cases, parsed, embedder.cache)))
    leader = fit_ranker(
        [cases[i].leader_rows for i in train_hits],
        [cases[i].labels[cases[i].leaders] for i in train_hits],
        LEADER_FEATURES,
        pairwise,
    )
    print(f"sentence and leader models fitted, {time.perf_counter() - started:.0f} s", flush=True)

    # The question-level model, over what the answerer now picks and quotes.
    answerer.model = AnswerModel(sentence, leader, untrained(EVIDENCE_FEATURES), {})
    evidence_rows: list[np.ndarray] = []
    evidence_labels: list[float] = []
    evidence_split: list[str] = []
    evidence_way: list[str] = []
    quote_words: list[int] = []
    for i, case in enumerate(cases):
        question, sentences = parsed[i]
        if not sentences:
            continue
        ranking: Ranking = answerer.rank(question, sentences, answerer.stand_alone(case.question, sentences))
        citations = answerer.cite(ranking.evidence, case.question)
        _p, row = answerer.confidence(ranking, case.coverage, case.candidates, citations)
        evidence_rows.append(row)
        evidence_labels.append(
            float(case.way != "swap" and contains_gold(" ".join(c.quote for c in citations), case.answers))
        )
        evidence_split.append(case.split)
        evidence_way.append(case.way)
        quote_words.append(sum(len(c.quote.split()) for c in citations))
    rows = np.vstack(evidence_rows)
    labels = np.array(evidence_labels)
    split = np.array(evidence_split)
    way = np.array(evidence_way)
    evidence = fit(rows[split == "train"], labels[split == "train"], EVIDENCE_FEATURES)
    model = AnswerModel(sentence, leader, evidence, {})

    # Validation on the valid split: sentence accuracy@1, then abstention.
    valid_hits = hits("valid")
    logits = []
    for i in valid_hits:
        case = cases[i]
        first = sentence.logit(case.rows)
        second = leader.logit(case.leader_rows)
        final = first.copy() - 100.0
        final[case.leaders] = second
        logits.append(final)
    acc_all, acc_possible = accuracy_at_1([cases[i] for i in valid_hits], logits)
    cosine_logits = [cases[i].rows[:, SENTENCE_FEATURES.index("cos_ctx")] for i in valid_hits]
    cos_all, cos_possible = accuracy_at_1([cases[i] for i in valid_hits], cosine_logits)
    probability = evidence.probability(rows)
    v = split == "valid"
    answerable = v & (way == "hit")
    negative = v & (way != "hit")
    best: tuple[float, float, float] = (0.5, 0.0, 0.0)
    curve = []
    for threshold in np.round(np.arange(0.05, 0.951, 0.025), 3):
        answered = float(np.mean(probability[answerable] >= threshold))
        abstained = float(np.mean(probability[negative] < threshold))
        right = float(np.mean(labels[answerable & (probability >= threshold)]))
        curve.append(
            {"threshold": float(threshold), "answered": answered, "right": right, "abstained": abstained}
        )
        if answered >= target_answered and abstained >= best[2]:
            best = (float(threshold), answered, abstained)
    validation = {
        "valid_questions": len([c for c in cases if c.way == "hit" and c.split == "valid"]),
        "sentence_accuracy_at_1": round(acc_all, 4),
        "sentence_accuracy_at_1_when_retrieved": round(acc_possible, 4),
        "cosine_alone_accuracy_at_1": round(cos_all, 4),
        "cosine_alone_accuracy_at_1_when_retrieved": round(cos_possible, 4),
        "threshold": best[0],
        "answered_when_answerable": round(best[1], 4),
        "abstained_on_misses": round(best[2], 4),
        "quote_contains_gold_when_answerable": round(float(np.mean(labels[answerable])), 4),
        "median_quote_words": statistics.median(quote_words),
        "curve": curve,
    }
    kind = "on pairs" if pairwise else "pointwise"
    model = AnswerModel(
        sentence,
        leader,
        evidence,
        {
            "credit": CREDIT,
            "made_by": f"make train (evals/train_scorer.py, seed {SEED}, {samples} train + {valid} valid "
            "SQuAD v1.1 questions with offset_method 'unique', each asked as is, without its article and "
            "without its paragraph, and with a name swapped for another question's; scikit-learn "
            f"LogisticRegression C=1 on standardised features; sentence models fitted {kind} "
            "then calibrated)",
            "validation": validation,
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(model.as_dict(), indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in validation.items() if k != "curve"}, indent=1))
    for point in curve:
        print(
            "  t={threshold:.3f} answered={answered:.3f} right={right:.3f} abstained={abstained:.3f}".format(
                **point
            )
        )
    for name, logistic in (("sentence", sentence), ("leader", leader), ("evidence", evidence)):
        print(name, {f: round(float(w), 3) for f, w in zip(logistic.features, logistic.coef, strict=True)})
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")


# --- validation ----------------------------------------------------------------------------------
def run_set(questions: list[dict[str, Any]], corpus: Path) -> tuple[list[Outcome], list[float]]:
    """Every question through the real pipeline over ``corpus``, never abstaining, with its confidence:
    any threshold's figures follow from one run."""
    from evals.run import run_ours

    work = Path(tempfile.mkdtemp(prefix="rag-validate-"))
    try:
        settings = Settings(
            corpus_dir=corpus, index_dir=work / "index", progress=False, min_answer_score=-1.0
        )
        pipeline = Pipeline(settings)
        pipeline.ingest()
        pipeline.query("warm-up question")
        return run_ours(pipeline, questions)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def at_threshold(outcomes: list[Outcome], scores: list[float], threshold: float) -> dict[str, Any]:
    """The figures `make eval` reports, had the answerer abstained below ``threshold``."""
    answerable = [(o, s) for o, s in zip(outcomes, scores, strict=True) if o.answerable]
    unanswerable = [s for o, s in zip(outcomes, scores, strict=True) if not o.answerable]
    answered = [o for o, s in answerable if s >= threshold]
    return {
        "threshold": threshold,
        "containment": round(sum(o.contains_answer for o in answered) / max(len(answerable), 1), 3),
        "median_words": statistics.median([o.words for o in answered]) if answered else None,
        "cited_support": round(sum(o.cited_support for o in answered) / max(len(answered), 1), 3),
        "answered": round(len(answered) / max(len(answerable), 1), 3),
        "abstained": round(sum(s < threshold for s in unanswerable) / len(unanswerable), 3)
        if unanswerable
        else None,
    }


def validate(
    data: Annotated[Path, typer.Option()] = DATA,
    threshold: Annotated[float | None, typer.Option(help="Instead of settings.min_answer_score.")] = None,
    shipped: Annotated[bool, typer.Option(help="Also evals/questions.jsonl over corpus/.")] = True,
    misses: Annotated[bool, typer.Option(help="Print the wrong answers.")] = False,
) -> None:
    from evals.metrics import summarize

    chosen = Settings().min_answer_score if threshold is None else threshold
    sets = []
    wiki = [json.loads(line) for line in (data / "wiki-squad2" / "questions.jsonl").read_text().splitlines()]
    for q in wiki:
        q.setdefault("evidence", q["answers"])
    sets.append(("wiki-squad2", wiki, data / "wiki-squad2" / "docs"))
    if shipped:
        ours = [
            json.loads(line) for line in (HERE / "questions.jsonl").read_text().splitlines() if line.strip()
        ]
        sets.append(("shipped", ours, HERE.parent / "corpus"))
    for name, questions, corpus in sets:
        outcomes, scores = run_set(questions, corpus)
        summary = summarize(outcomes, with_types=False)
        print(
            f"{name}: hit@5 {summary.hit_at_5} MRR {summary.mrr} "
            f"p50 {summary.p50_ms} ms p95 {summary.p95_ms} ms"
        )
        print(f"  at {chosen}: {at_threshold(outcomes, scores, chosen)}", flush=True)
        for t in np.round(np.arange(0.05, 0.61, 0.05), 2):
            print(f"    {at_threshold(outcomes, scores, float(t))}")
        if misses:
            for o, s in zip(outcomes, scores, strict=True):
                if (o.answerable and not (o.contains_answer and s >= chosen)) or (
                    not o.answerable and s >= chosen
                ):
                    print(f"  miss {o.id} p={s:.3f}: {o.text[:140]!r}")


app = typer.Typer(add_completion=False)
app.command("train")(train)
app.command("validate")(validate)

if __name__ == "__main__":
    app()
