"""`make bench`: speed, memory and retrieval quality as the corpus grows, ours beside the LangChain peer.

Corpora of 5, ~300 and ~3,000 articles (30,000 with --big): the five shipped articles plus synthetic
distractors written by a word-trigram model of their text that copies no more than six words in a row
and swaps every name and number (evals/synth.py), so the shipped questions keep one right answer.
Every measurement runs in a fresh child process, so peak RSS and cold start are the system's own.
Prints a table, writes evals/results/bench.json and bench.png. A benchmark prints numbers; nothing
here asserts a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus"


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def run_worker(*args: str) -> dict[str, Any]:
    env = {**os.environ, "RAG_PROGRESS": "false"}
    out = subprocess.run(
        [sys.executable, "-m", "evals.bench_workers", *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=4 * 3600,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def cold_start(corpus: Path, index: Path) -> float:
    """Process start to first answer, index already built: imports, model load, index open, one query.
    The clock stops when the child reports its answer, not when it exits: tearing down Chroma and the
    models takes another 0.3 s at 30,000 articles, which no reader waits for."""
    code = (
        f"import rag; rag.configure(corpus_dir={str(corpus)!r}, index_dir={str(index)!r}, progress=False); "
        "assert rag.query('How far is the Belarusian border from Kyiv?').passages; "
        "print('answered', flush=True)"
    )
    started = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as child:
        assert child.stdout is not None
        answered = child.stdout.readline().strip() == "answered"
        elapsed = time.perf_counter() - started
        if child.wait(timeout=600) != 0 or not answered:
            raise RuntimeError(f"the cold-start child failed (exit code {child.returncode})")
    return round(elapsed, 2)


# --- the benchmark -----------------------------------------------------------------------------------
def main(
    sizes: Annotated[str, typer.Option(help="Comma-separated corpus sizes")] = "5,300,3000",
    big: Annotated[bool, typer.Option(help="Also 30,000 articles (hours on 2 cores)")] = False,
    skip_peer: Annotated[bool, typer.Option(help="Measure only our pipeline")] = False,
    out_dir: Annotated[Path, typer.Option("--out")] = HERE / "results",
) -> None:
    from evals.synth import write_distractor_corpus

    counts = [int(s) for s in sizes.split(",")] + ([30_000] if big else [])
    rows = []
    for count in counts:
        work = Path(tempfile.mkdtemp(prefix=f"rag-bench-{count}-"))
        try:
            corpus = work / "corpus"
            shutil.copytree(CORPUS, corpus)
            write_distractor_corpus(CORPUS, corpus, max(0, count - 5))
            row: dict[str, Any] = {"size": count, "corpus_mb": folder_mb(corpus)}
            row["ours"] = run_worker("ours", str(corpus), str(work / "ours"))
            row["ours"]["cold_start_s"] = cold_start(corpus, work / "ours")
            if not skip_peer:
                row["peer"] = run_worker("peer", str(corpus), str(work / "peer"))
            rows.append(row)
            print_row(row)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out_dir / "bench.png")
    print_table(rows)
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'}")


def print_row(row: dict[str, Any]) -> None:
    print(f"[{row['size']} articles] ours: {row['ours']}  peer: {row.get('peer')}", flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Benchmark (2 cores; model load excluded from ingest)")
    for column in [
        "articles",
        "system",
        "ingest s",
        "chunks/s",
        "articles/s",
        "index MB",
        "peak RSS MB",
        "p50 ms",
        "p95 ms",
        "re-ingest 1 s",
        "cold start s",
        "hit@5 (peer: @4)",
    ]:
        table.add_column(column, justify="right")
    for row in rows:
        for name in ("ours", "peer"):
            r = row.get(name)
            if not r:
                continue
            table.add_row(
                str(row["size"]),
                name,
                str(r["ingest_s"]),
                f"{r['chunks'] / r['ingest_s']:.1f}" if r["ingest_s"] else "-",
                f"{r['articles'] / r['ingest_s']:.1f}" if r["ingest_s"] else "-",
                str(r["index_mb"]),
                str(r["peak_rss_mb"]),
                str(r["p50_ms"]),
                str(r["p95_ms"]),
                str(r.get("reingest_one_s", "-")),
                str(r.get("cold_start_s", "-")),
                str(r.get("hit_at_5", r.get("hit_at_4"))),
            )
    Console(width=160).print(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, marker in (("ours", "o"), ("peer", "s")):
        points = [(r["size"], r[name]) for r in rows if name in r]
        if not points:
            continue
        sizes = [s for s, _ in points]
        left.plot(sizes, [m["p50_ms"] for _, m in points], marker=marker, label=f"{name} p50")
        left.plot(sizes, [m["p95_ms"] for _, m in points], marker=marker, linestyle="--", label=f"{name} p95")
        right.plot(sizes, [m["ingest_s"] for _, m in points], marker=marker, label=name)
    for axis, title in ((left, "Query latency (ms)"), (right, "Ingest time (s)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("articles in the corpus")
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    typer.run(main)
