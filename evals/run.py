"""`make eval`: every question set through rag.query and through the LangChain tutorial peer.

Each set is indexed from its own corpus in a temporary folder and put to us, then to the peer. Per set
it prints a side-by-side table (ours, the peer) and ours by question type; then a summary of all sets.
It also draws the risk-coverage curve of ours per set (``evals/curve.py``): the set is asked again with
abstention off, and the abstention threshold is swept over ``Answer.confidence``. Writes
``evals/results/eval.json``, ``eval.png`` (quality bars, a panel per set), ``risk_coverage.json`` and
``risk_coverage.png``.

``--set NAME=QUESTIONS:CORPUS`` adds a set, ``--only NAME`` runs only the named ones, ``--calibrate``
also reports the threshold that best separates answerable from unanswerable questions on each set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import rag
from evals.baseline import TutorialBaseline
from evals.curve import CurvePoint, Graded, curve_json, plot_curves, point_at, sweep
from evals.metrics import Outcome, Summary, judge, summarize
from evals.sets import (
    HERE,
    REPO,
    QuestionSet,
    SetSpecError,
    default_sets,
    load_questions,
    locate_gold,
    parse_set_spec,
    select,
)
from rag.pipeline import Pipeline
from rag.settings import Settings

__all__ = ["HERE", "calibrate", "load_questions", "main"]

console = Console(width=140)
# Abstention is off for the risk-coverage pass: every question gets the answer the system would give.
NO_ABSTENTION = -1e9
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


@dataclass
class SetResult:
    name: str
    questions: Path
    corpus: Path
    articles: int
    ours: list[Outcome]
    unrestrained: list[Outcome]  # ours again with abstention off (for the curve and --calibrate)
    peer: list[Outcome] | None
    curve: list[CurvePoint]
    operating: CurvePoint
    threshold: float
    notes: list[str] = field(default_factory=list)

    @property
    def ours_summary(self) -> Summary:
        return summarize(self.ours)

    @property
    def peer_summary(self) -> Summary | None:
        return summarize(self.peer) if self.peer is not None else None


def history_for(question: dict[str, Any], asked: dict[str, tuple[str, str]]) -> list[dict[str, str]] | None:
    """A follow-up is asked after the question it follows, with that turn's answer as the history."""
    previous = question.get("previous")
    if not previous:
        return None
    prev_question, prev_answer = asked[previous]
    return [{"role": "user", "content": prev_question}, {"role": "assistant", "content": prev_answer}]


def run_ours(pipeline: Pipeline, questions: list[dict[str, Any]]) -> list[Outcome]:
    asked: dict[str, tuple[str, str]] = {}
    outcomes: list[Outcome] = []
    for q in sorted(questions, key=lambda q: bool(q.get("previous"))):
        started = time.perf_counter()
        answer = pipeline.query(q["question"], history=history_for(q, asked))
        seconds = time.perf_counter() - started
        asked[q["id"]] = (q["question"], answer.text)
        invalid = sum(
            pipeline.article(c.article_id).text[c.start : c.end] != c.quote for c in answer.citations
        )
        outcomes.append(
            judge(
                q,
                found=answer.found,
                text=answer.text,
                passages=[p.text for p in answer.passages],
                passage_locations=[(p.article_id, p.start, p.end) for p in answer.passages],
                quotes=[c.quote for c in answer.citations],
                quote_locations=[(c.article_id, c.start, c.end) for c in answer.citations],
                invalid_citations=invalid,
                seconds=seconds,
                confidence=answer.confidence,
            )
        )
    return outcomes


def run_baseline(baseline: TutorialBaseline, questions: list[dict[str, Any]]) -> list[Outcome]:
    """The peer's outcomes, asked after ours (as the bench does: one system at a time)."""
    return [ask_peer(baseline, q) for q in questions]


def ask_peer(baseline: TutorialBaseline, q: dict[str, Any]) -> Outcome:
    """The peer has no chat history: a follow-up is asked as it stands."""
    started = time.perf_counter()
    result = baseline.query(q["question"])
    seconds = time.perf_counter() - started
    return judge(
        q,
        found=bool(result["text"]),
        text=result["text"],
        passages=result["passages"],
        passage_locations=result["passage_locations"],
        quotes=result["quotes"],
        quote_locations=result["quote_locations"],
        invalid_citations=result["invalid"],
        seconds=seconds,
    )


def graded(outcomes: list[Outcome]) -> list[Graded]:
    return [Graded(o.confidence or 0.0, o.answerable, o.contains_answer) for o in outcomes]


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
        rate = sum(abstained) / len(abstained) if abstained else 0.0
        if rate > best[1]:
            best = (threshold, rate)
    return best


def evaluate_set(qset: QuestionSet, work: Path, with_peer: bool) -> SetResult:
    questions = load_questions(qset.questions)
    settings = Settings(corpus_dir=qset.corpus, index_dir=work / "index", progress=False)
    pipeline = Pipeline(settings)
    pipeline.ingest()
    rag.configure(settings)
    articles = pipeline.articles()
    notes = []
    unlocated = 0
    for q in questions:
        if q.get("doc_id") and q.get("context"):
            q["gold"] = locate_gold(q, articles)
            unlocated += q["gold"] is None
    if unlocated:
        notes.append(f"{unlocated} gold paragraphs not found in the cleaned text (scored as misses)")
    pipeline.query("warm-up question")  # load the model before timing
    console.print(f"[bold]{qset.name}[/]: {len(questions)} questions over {len(articles)} articles")
    ours = run_ours(pipeline, questions)
    # The same index, asked again with abstention off: the answer each question would get, and its
    # confidence, for the risk-coverage sweep.
    open_settings = Settings(
        corpus_dir=qset.corpus, index_dir=work / "index", progress=False, min_answer_score=NO_ABSTENTION
    )
    unrestrained = run_ours(Pipeline(open_settings), questions)
    points = sweep(graded(unrestrained))
    operating = point_at(graded(unrestrained), pipeline.answerer.threshold)
    answered = sum(o.found for o in ours if o.answerable)
    abstained = sum(not o.found for o in ours if not o.answerable)
    if (answered, abstained) != (operating.answered, operating.abstained_count):
        notes.append(
            f"the curve at min_answer_score answers {operating.answered} and abstains on "
            f"{operating.abstained_count}; the run with abstention on answered {answered} and abstained "
            f"on {abstained} (a follow-up's history holds the previous answer, which differs)"
        )
    peer = None
    if with_peer:
        baseline = TutorialBaseline(articles, settings.embedding_model, work / "baseline")
        baseline.query("warm-up question")
        peer = run_baseline(baseline, questions)
    return SetResult(
        qset.name,
        qset.questions,
        qset.corpus,
        len(articles),
        ours,
        unrestrained,
        peer,
        points,
        operating,
        pipeline.answerer.threshold,
        notes,
    )


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:g}"  # NaN: the set has no such questions
    return str(value)


def print_set(result: SetResult) -> None:
    ours, peer = result.ours_summary, result.peer_summary
    table = Table(title=f"{result.name}: {ours.n} questions over {result.articles} articles")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    if peer is not None:
        table.add_column("LangChain tutorial", justify="right")
    for label, key in ROWS:
        row = [label, fmt(getattr(ours, key))]
        if peer is not None:
            row.append(fmt(getattr(peer, key)))
        table.add_row(*row)
    if peer is not None and peer.p50_ms:
        table.add_row("p50 latency ratio (ours / peer)", f"{ours.p50_ms / peer.p50_ms:.2f}", "1.00")
    console.print(table)
    by_type = Table(title=f"{result.name}: ours by question type")
    keys = ["n", *QUALITY_KEYS[1:], "median_answer_words"]
    by_type.add_column("type")
    for key in keys:
        by_type.add_column(key, justify="right")
    for kind, values in ours.by_type.items():
        by_type.add_row(kind, *(fmt(values[k]) for k in keys))
    console.print(by_type)
    op = result.operating
    console.print(
        f"risk-coverage at min_answer_score {result.threshold:g} (abstention off, then thresholded): "
        f"coverage {op.coverage:.3f}, right {fmt(op.accuracy)}, unanswerable abstained {fmt(op.abstained)}"
    )
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}")
    misses = [
        o for o in result.ours if (o.answerable and not o.contains_answer) or (not o.answerable and o.found)
    ]
    for o in misses[:8]:
        console.print(f"[yellow]miss[/] {o.id} ({o.type}) found={o.found}: {o.text[:100]!r}", soft_wrap=True)
    if len(misses) > 8:
        console.print(f"… {len(misses) - 8} more misses in eval.json")


SUMMARY_COLUMNS = [
    ("hit@5", "hit_at_5"),
    ("MRR", "mrr"),
    ("contains gold", "answer_containment"),
    ("median words", "median_answer_words"),
    ("cited support", "cited_support"),
    ("answered", "answered_when_answerable"),
    ("abstained", "abstained_when_unanswerable"),
    ("invalid", "invalid_citations"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
]


def print_summary(results: list[SetResult]) -> None:
    table = Table(title="All sets (answered: when answerable; abstained: when unanswerable)")
    table.add_column("set")
    table.add_column("n", justify="right")
    table.add_column("system")
    for label, _ in SUMMARY_COLUMNS:
        table.add_column(label, justify="right")
    for r in results:
        rows: list[tuple[str, Summary]] = [("ours", r.ours_summary)]
        if r.peer_summary is not None:
            rows.append(("peer", r.peer_summary))
        for system, s in rows:
            table.add_row(r.name, str(s.n), system, *(fmt(getattr(s, key)) for _, key in SUMMARY_COLUMNS))
    console.print(table)


def plot_bars(results: list[SetResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = QUALITY_KEYS
    x = range(len(keys))
    fig, axes = plt.subplots(len(results), 1, figsize=(13, 3.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        ours, peer = r.ours_summary, r.peer_summary

        def values(s: Summary) -> list[float]:
            return [v if v == v else 0.0 for v in (float(getattr(s, k)) for k in keys)]

        ax.bar(
            [i - 0.2 for i in x], values(ours), 0.4, label=f"ours (median {ours.median_answer_words} words)"
        )
        if peer is not None:
            ax.bar(
                [i + 0.2 for i in x],
                values(peer),
                0.4,
                label=f"peer (median {peer.median_answer_words} words)",
            )
        ax.set_xticks(list(x), [k.replace("_", " ") for k in keys], rotation=15, ha="right")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(f"{r.name} ({ours.n} questions): quality, higher is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (modified)' if dirty else ''}"


def main(
    set_specs: Annotated[
        list[str] | None, typer.Option("--set", help="NAME=QUESTIONS:CORPUS, another set (repeatable)")
    ] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="run only this set (repeatable)")] = None,
    out_dir: Annotated[Path, typer.Option("--out")] = HERE / "results",
    calibrate_threshold: Annotated[bool, typer.Option("--calibrate")] = False,
    with_peer: Annotated[bool, typer.Option("--peer/--no-peer", help="also run the LangChain peer")] = True,
) -> None:
    sets, notes = default_sets()
    try:
        sets += [parse_set_spec(spec) for spec in set_specs or []]
        sets = select(sets, only or [])
    except SetSpecError as exc:
        raise typer.BadParameter(str(exc)) from None
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for qset in sets:
        work = Path(tempfile.mkdtemp(prefix=f"rag-eval-{qset.name}-"))
        try:
            results.append(evaluate_set(qset, work, with_peer))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_set(results[-1])
    print_summary(results)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "skipped": notes,
        "sets": {},
    }
    curves: dict[str, Any] = {}
    for r in results:
        entry: dict[str, Any] = {
            "questions": str(r.questions),
            "corpus": str(r.corpus),
            "articles": r.articles,
            "ours": r.ours_summary.as_dict(),
            "peer": r.peer_summary.as_dict() if r.peer_summary is not None else None,
            "notes": r.notes,
            "outcomes": [o.__dict__ for o in r.ours],
        }
        if calibrate_threshold:
            threshold, rate = calibrate(r.unrestrained, [o.confidence or 0.0 for o in r.unrestrained])
            console.print(
                f"{r.name}: abstention threshold for this set {threshold:.4f} (abstains on {rate:.3f})"
            )
            entry["calibration"] = {"threshold": threshold, "abstained_when_unanswerable": rate}
        report["sets"][r.name] = entry
        curves[r.name] = {"min_answer_score": r.threshold, **curve_json(r.curve, r.operating)}
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out_dir / "risk_coverage.json").write_text(json.dumps(curves, indent=2))
    if results:
        plot_bars(results, out_dir / "eval.png")
        plot_curves({r.name: (r.curve, r.operating) for r in results}, out_dir / "risk_coverage.png")
    console.print(f"wrote eval.json, eval.png, risk_coverage.json and risk_coverage.png to {out_dir}")


if __name__ == "__main__":
    typer.run(main)
