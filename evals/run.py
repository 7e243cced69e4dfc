"""`make eval`: run the question set through rag.query and through the LangChain tutorial baseline.

Prints a side-by-side table (overall and by question type), writes JSON and a PNG chart to
evals/results/. `--calibrate` also reports the abstention threshold that best separates answerable
from unanswerable questions on this set.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import rag
from evals.baseline import TutorialBaseline
from evals.metrics import Outcome, Summary, judge, summarize
from rag.pipeline import Pipeline
from rag.settings import Settings

HERE = Path(__file__).resolve().parent
console = Console(width=120)
# The rates shown per question type and in the chart (all 0..1, higher is better).
QUALITY_KEYS = [
    "hit_at_1",
    "hit_at_5",
    "mrr",
    "answer_containment",
    "cited_support",
    "answered_when_answerable",
    "abstained_when_unanswerable",
]
ROWS = [
    ("hit@1", "hit_at_1"),
    ("hit@3", "hit_at_3"),
    ("hit@5", "hit_at_5"),
    ("MRR", "mrr"),
    ("answer containment", "answer_containment"),
    ("median answer words", "median_answer_words"),
    ("cited support", "cited_support"),
    ("answered when answerable", "answered_when_answerable"),
    ("abstained when unanswerable", "abstained_when_unanswerable"),
    ("invalid citations", "invalid_citations"),
    ("p50 latency ms", "p50_ms"),
    ("p95 latency ms", "p95_ms"),
]


def load_questions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def history_for(question: dict[str, Any], asked: dict[str, tuple[str, str]]) -> list[dict[str, str]] | None:
    """A follow-up is asked after the question it follows, with that turn's answer as the history."""
    previous = question.get("previous")
    if not previous:
        return None
    prev_question, prev_answer = asked[previous]
    return [{"role": "user", "content": prev_question}, {"role": "assistant", "content": prev_answer}]


def run_ours(pipeline: Pipeline, questions: list[dict[str, Any]]) -> tuple[list[Outcome], list[float]]:
    asked: dict[str, tuple[str, str]] = {}
    outcomes: list[Outcome] = []
    best_scores: list[float] = []
    for q in sorted(questions, key=lambda q: bool(q.get("previous"))):
        started = time.perf_counter()
        answer = pipeline.query(q["question"], history=history_for(q, asked))
        seconds = time.perf_counter() - started
        asked[q["id"]] = (q["question"], answer.text)
        invalid = sum(
            pipeline.article(c.article_id).text[c.start : c.end] != c.quote for c in answer.citations
        )
        best_scores.append(answer.confidence)
        outcomes.append(
            judge(
                q,
                found=answer.found,
                text=answer.text,
                passages=[p.text for p in answer.passages],
                quotes=[c.quote for c in answer.citations],
                invalid_citations=invalid,
                seconds=seconds,
            )
        )
    return outcomes, best_scores


def run_baseline(baseline: TutorialBaseline, questions: list[dict[str, Any]]) -> list[Outcome]:
    outcomes = []
    for q in questions:
        started = time.perf_counter()
        result = baseline.query(q["question"])
        seconds = time.perf_counter() - started
        outcomes.append(
            judge(
                q,
                found=bool(result["text"]),
                text=result["text"],
                passages=result["passages"],
                quotes=result["quotes"],
                invalid_citations=result["invalid"],
                seconds=seconds,
            )
        )
    return outcomes


def calibrate(
    outcomes: list[Outcome], scores: list[float], min_answered: float = 0.95
) -> tuple[float, float]:
    """The threshold that abstains most on unanswerable questions while still answering at least
    ``min_answered`` of the answerable ones; ties go to the lower threshold (answer more)."""
    best = (0.0, -1.0)
    for threshold in sorted(set(scores)):
        answered = [s >= threshold for o, s in zip(outcomes, scores, strict=True) if o.answerable]
        abstained = [s < threshold for o, s in zip(outcomes, scores, strict=True) if not o.answerable]
        if sum(answered) / len(answered) < min_answered:
            break
        rate = sum(abstained) / len(abstained)
        if rate > best[1]:
            best = (threshold, rate)
    return best


def print_table(ours: Summary, base: Summary) -> None:
    table = Table(title=f"Evaluation on {ours.n} questions")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    table.add_column("LangChain tutorial", justify="right")
    for label, key in ROWS:
        table.add_row(label, str(getattr(ours, key)), str(getattr(base, key)))
    ratio = ours.p50_ms / base.p50_ms if base.p50_ms else float("nan")
    table.add_row("p50 latency ratio (ours / baseline)", f"{ratio:.2f}", "1.00")
    console.print(table)
    by_type = Table(title="Ours by question type")
    keys = ["n", *QUALITY_KEYS[1:], "median_answer_words"]
    by_type.add_column("type")
    for key in keys:
        by_type.add_column(key, justify="right")
    for kind, values in ours.by_type.items():
        by_type.add_row(kind, *(str(values[k]) for k in keys))
    console.print(by_type)


def plot(ours: Summary, base: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = QUALITY_KEYS
    x = range(len(keys))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    left.bar([i - 0.2 for i in x], [getattr(ours, k) for k in keys], 0.4, label="ours")
    left.bar([i + 0.2 for i in x], [getattr(base, k) for k in keys], 0.4, label="LangChain tutorial")
    left.set_xticks(list(x), [k.replace("_", " ") for k in keys], rotation=25, ha="right")
    left.set_ylim(0, 1.05)
    left.legend()
    left.set_title("Quality (higher is better)")
    right.bar(["ours", "baseline"], [ours.median_answer_words, base.median_answer_words])
    right.set_title("Median answer words")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(
    questions_file: Annotated[Path, typer.Option("--questions")] = HERE / "questions.jsonl",
    corpus_dir: Annotated[Path, typer.Option("--corpus")] = HERE.parent / "corpus",
    out_dir: Annotated[Path, typer.Option("--out")] = HERE / "results",
    calibrate_threshold: Annotated[bool, typer.Option("--calibrate")] = False,
) -> None:
    questions = load_questions(questions_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rag-eval-"))
    try:
        overrides: dict[str, Any] = {"corpus_dir": corpus_dir, "index_dir": work / "index", "progress": False}
        if calibrate_threshold:
            overrides["min_answer_score"] = -1.0
        settings = Settings(**overrides)
        pipeline = Pipeline(settings)
        pipeline.ingest()
        rag.configure(settings)
        pipeline.query("warm-up question")  # load the model before timing
        ours, scores = run_ours(pipeline, questions)
        baseline = TutorialBaseline(pipeline.articles(), settings.embedding_model, work / "baseline")
        baseline.query("warm-up question")
        base = run_baseline(baseline, questions)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_summary, base_summary = summarize(ours), summarize(base)
    print_table(ours_summary, base_summary)
    misses = [o for o in ours if (o.answerable and not o.contains_answer) or (not o.answerable and o.found)]
    for o in misses:
        console.print(f"[yellow]miss[/] {o.id} ({o.type}) found={o.found}: {o.text[:100]!r}", soft_wrap=True)
    result = {
        "ours": ours_summary.as_dict(),
        "baseline": base_summary.as_dict(),
        "questions": [o.__dict__ for o in ours],
    }
    if calibrate_threshold:
        threshold, balanced = calibrate(ours, scores)
        console.print(f"abstention threshold for this set: {threshold:.4f} (abstains on {balanced:.3f})")
        result["calibration"] = {"threshold": threshold, "abstained_when_unanswerable": balanced}
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    plot(ours_summary, base_summary, out_dir / "eval.png")
    console.print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval.png'}")


if __name__ == "__main__":
    typer.run(main)
