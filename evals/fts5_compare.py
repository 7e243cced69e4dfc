"""SQLite FTS5 beside our own BM25 index (rag/sparse.py): should the project keep its index or use FTS5?

FTS5 comes with Python's sqlite3 and the article store is already an SQLite database, so a full-text
table next to the articles would replace rag/sparse.py's segments, its state files and its merging.
This measures what that swap would change, on the chunks the project itself indexes (the 5 shipped
articles plus 295 or 2,995 synthetic distractors from evals/synth.py, cut by ``chunk_article`` with
700 characters and one sentence of overlap), with BM25 alone (no dense retrieval, no fusion):

- ``ours``: ``SparseIndex`` (Lucene BM25, k1 = 1.5, b = 0.75, our stop words and Snowball stems);
- ``fts5-porter``: FTS5's own ``porter unicode61`` tokenizer and its ``bm25()`` (k1 = 1.2, b = 0.75,
  fixed at compile time), queried with every word of the question OR-ed (FTS5 has no stop words);
- ``fts5-porter-stopq``: the same table, queried without our stop words (is it the query words?);
- ``fts5-ourtokens``: our ``tokenize()`` output joined by spaces in a ``unicode61`` table, so that the
  terms are ours and only the scoring differs (is it the analysis or BM25's constants?).

For each: hit@5 on the shipped questions (a top-5 chunk of a real article holds the evidence, as in
evals/bench_workers.py), mean overlap of the top 5 with ours, warm query latency (p50/p95 over every
question, several interleaved passes so that load from other processes falls on all alike), the time
to build the index from the chunks, the time to replace one article and be ready to query (ours: an
``update`` whose catalog has one changed content hash, then ``load``; FTS5: delete its rows, insert
the new ones, commit), and the size on disk. Chunking and distractor writing are common to all and not
timed. The FTS5 tables keep their own copy of the chunk text (SQLite 3.40 cannot delete from a
contentless table); its share of the size is reported separately.

Run from the repository root: ``python -m evals.fts5_compare``. Prints a markdown table and writes
the numbers to /tmp/fts5_compare.json. A benchmark prints numbers; nothing here asserts one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from evals.bench import CORPUS
from evals.bench_workers import real_article_ids, shipped_questions, supports
from rag.article_store import CatalogEntry, text_hash
from rag.articles import content_hash, load_articles
from rag.chunking import chunk_article, sentence_spans
from rag.sparse import SparseIndex, _stopwords, tokenize
from rag.types import Article, IndexedArticle

DISTRACTORS = (295, 2995)
CHUNK_SIZE = 700
OVERLAP_SENTENCES = 1
K = 5
PASSES = 3  # every question is asked this many times of every system, interleaved
REPLACEMENTS = 5  # articles replaced one at a time; the median time is reported
OUT = Path("/tmp/fts5_compare.json")
WARM_UP = "warm-up question about the talks"

Key = tuple[str, int]  # (article id, chunk index)


# --- the corpus --------------------------------------------------------------------------------------
def indexed(article: Article) -> IndexedArticle:
    """The article as the pipeline indexes it (rag/pipeline.py): chunk and sentence spans."""
    chunks = chunk_article(article, CHUNK_SIZE, OVERLAP_SENTENCES)
    return IndexedArticle(
        **article.model_dump(),
        chunks=[(c.start, c.end) for c in chunks],
        sentences=[(s.start, s.end) for s in sentence_spans(article.text)],
    )


def load_corpus(files: list[Path]) -> dict[str, IndexedArticle]:
    """The shipped articles and ``files``, skipping a text seen before (as an ingest does)."""
    articles, skipped = load_articles([CORPUS, *files], max_bytes=10_000_000)
    if skipped:
        raise RuntimeError(f"files skipped: {skipped}")
    seen: set[str] = set()
    out: dict[str, IndexedArticle] = {}
    for article in articles:
        digest = text_hash(article.text)
        if digest not in seen:
            seen.add(digest)
            out[article.id] = indexed(article)
    return out


def changed(article: IndexedArticle) -> IndexedArticle:
    """A new version of an article: one sentence more, so a new content hash and new chunks."""
    text = article.text + "\n\nOne more sentence changes this article."
    base = Article(
        id=article.id,
        title=article.title,
        text=text,
        source=article.source,
        outlet=article.outlet,
        date=article.date,
        content_hash=content_hash(article.title, text, article.outlet, article.date),
        stamp=article.stamp,
    )
    return indexed(base)


def disk_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


# --- the systems -------------------------------------------------------------------------------------
class Ours:
    """rag/sparse.py, driven the way ArticleIndex drives it: update to a catalog, then load."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = SparseIndex(root)
        self.articles: dict[str, IndexedArticle] = {}
        self.catalog: dict[str, CatalogEntry] = {}
        self.generation = 0

    def _fetch(self, ids: list[str]) -> dict[str, IndexedArticle]:
        return {i: self.articles[i] for i in ids}

    def _commit(self) -> None:
        self.generation += 1
        self.index.update(self.catalog, self._fetch, self.generation)
        if not self.index.load(self.generation):
            raise RuntimeError("the BM25 state just written cannot be loaded")

    def build(self, articles: dict[str, IndexedArticle]) -> None:
        self.articles = dict(articles)
        self.catalog = {a.id: CatalogEntry.of(a) for a in articles.values()}
        self._commit()

    def replace(self, article: IndexedArticle) -> None:
        self.articles[article.id] = article
        self.catalog[article.id] = CatalogEntry.of(article)
        self._commit()

    def tidy(self) -> None:
        """What an ingest does after its commit (not part of being ready to query)."""
        self.index.forget_older_than(self.generation)

    def search(self, question: str, k: int) -> list[Key]:
        return [key for key, _score in self.index.search(question, k)]

    def size(self) -> dict[str, int]:
        return {"total": disk_bytes(self.index.folder), "content": 0}


def _quoted(terms: list[str]) -> str:
    """An FTS5 query matching any of the terms, each a quoted string so no word is read as syntax."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class Fts5:
    """One FTS5 table of chunks, with a side table of each article's rowids so that replacing an article
    deletes by rowid range instead of scanning the table. WAL and synchronous=NORMAL, as the article
    store (rag/article_store.py) opens its database."""

    def __init__(self, path: Path, tokenizer: str, analyse: Callable[[list[str]], list[str]]) -> None:
        self.path = path
        self.analyse = analyse
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.tokenizer = tokenizer
        self.next_rowid = 1

    def _rows(self, articles: list[IndexedArticle]) -> list[tuple[int, str, str, int]]:
        keys = [(a.id, c.index) for a in articles for c in a.iter_chunks()]
        bodies = self.analyse([c.text for a in articles for c in a.iter_chunks()])
        first = self.next_rowid
        self.next_rowid += len(keys)
        return [
            (first + n, body, aid, i) for n, ((aid, i), body) in enumerate(zip(keys, bodies, strict=True))
        ]

    def _insert(self, articles: list[IndexedArticle]) -> None:
        rows = self._rows(articles)
        self.db.executemany("INSERT INTO chunks (rowid, body, article_id, chunk) VALUES (?, ?, ?, ?)", rows)
        spans, row = [], rows[0][0] if rows else 0
        for article in articles:
            spans.append((article.id, row, row + len(article.chunks) - 1))
            row += len(article.chunks)
        self.db.executemany("INSERT OR REPLACE INTO spans VALUES (?, ?, ?)", spans)

    def build(self, articles: dict[str, IndexedArticle]) -> None:
        self.db.execute("BEGIN")
        self.db.execute(
            "CREATE VIRTUAL TABLE chunks USING fts5(body, article_id UNINDEXED, chunk UNINDEXED, "
            f"tokenize = '{self.tokenizer}')"
        )
        self.db.execute("CREATE TABLE spans (article_id TEXT PRIMARY KEY, first INTEGER, last INTEGER)")
        self._insert(list(articles.values()))
        self.db.execute("COMMIT")

    def replace(self, article: IndexedArticle) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        span = self.db.execute("SELECT first, last FROM spans WHERE article_id = ?", (article.id,)).fetchone()
        if span is not None:
            self.db.execute("DELETE FROM chunks WHERE rowid BETWEEN ? AND ?", span)
        self._insert([article])
        self.db.execute("COMMIT")

    def tidy(self) -> None:
        pass

    def search(self, terms: list[str], k: int) -> list[Key]:
        if not terms:
            return []
        rows = self.db.execute(
            "SELECT article_id, chunk FROM chunks WHERE chunks MATCH ? ORDER BY rank LIMIT ?",
            (_quoted(terms), k),
        ).fetchall()
        return [(str(a), int(i)) for a, i in rows]

    def size(self) -> dict[str, int]:
        """Bytes on disk after a checkpoint, and the share of the table that is the copied chunk text."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total = sum(
            disk_bytes(Path(f"{self.path}{s}"))
            for s in ("", "-wal", "-shm")
            if Path(f"{self.path}{s}").exists()
        )
        (content,) = self.db.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = 'chunks_content'"
        ).fetchone()
        return {"total": total, "content": int(content or 0)}

    def vocabulary(self) -> dict[str, int]:
        """Term -> number of chunks holding it, as FTS5 counts them."""
        self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, chunks, row)")
        return {str(t): int(n) for t, n in self.db.execute("SELECT term, doc FROM temp.vocab")}

    def close(self) -> None:
        self.db.close()


def own_tokens(texts: list[str]) -> list[str]:
    return [" ".join(tokens) for tokens in tokenize(texts)]


def raw_words(question: str) -> list[str]:
    """The question's words as unicode61 splits them (FTS5 stems them with porter at query time)."""
    return re.findall(r"\w+", question.lower())


def raw_words_without_stopwords(question: str) -> list[str]:
    stop = _stopwords()
    return [w for w in raw_words(question) if w not in stop]


# --- measuring ---------------------------------------------------------------------------------------
def percentile_ms(values: list[float], q: float) -> float:
    """As evals/bench_workers.py's, to the hundredth of a millisecond (FTS5 answers in well under one)."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 2)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(articles: dict[str, IndexedArticle], work: Path) -> dict[str, Any]:
    questions, real = shipped_questions(), real_article_ids()
    ours = Ours(work / "ours")
    porter = Fts5(work / "fts5-porter.db", "porter unicode61", lambda texts: texts)
    # remove_diacritics 0: the terms stay byte for byte ours (checked below against our vocabulary).
    mine = Fts5(work / "fts5-ourtokens.db", "unicode61 remove_diacritics 0", own_tokens)
    indexes: dict[str, Ours | Fts5] = {"ours": ours, "fts5-porter": porter, "fts5-ourtokens": mine}
    searchers: dict[str, tuple[str, Callable[[str], list[Key]]]] = {
        "ours": ("ours", lambda q: ours.search(q, K)),
        "fts5-porter": ("fts5-porter", lambda q: porter.search(raw_words(q), K)),
        "fts5-porter-stopq": ("fts5-porter", lambda q: porter.search(raw_words_without_stopwords(q), K)),
        "fts5-ourtokens": ("fts5-ourtokens", lambda q: mine.search(tokenize([q])[0], K)),
    }

    tokenize([WARM_UP])  # load the stemmer and the stop words outside the timed builds
    built = {name: timed(partial(index.build, articles)) for name, index in indexes.items()}
    sizes = {name: index.size() for name, index in indexes.items()}
    ours_df = dict(ours.index.state.frequency)
    fts_df = mine.vocabulary()
    vocabulary_differences = len(set(ours_df.items()) ^ set(fts_df.items()))

    for _, search in searchers.values():
        search(WARM_UP)
    latencies: dict[str, list[float]] = {name: [] for name in searchers}
    top: dict[str, list[list[Key]]] = {name: [] for name in searchers}
    for p in range(PASSES):
        for q in questions:
            for name, (_, search) in searchers.items():
                started = time.perf_counter()
                found = search(q["question"])
                latencies[name].append(time.perf_counter() - started)
                if p == 0:
                    top[name].append(found)

    victims = sorted(a for a in articles if a not in real)[:: max(1, (len(articles) - 5) // REPLACEMENTS)]
    replaced: dict[str, list[float]] = {name: [] for name in indexes}
    current = dict(articles)
    for article_id in victims[:REPLACEMENTS]:
        current[article_id] = changed(articles[article_id])
        for name, index in indexes.items():
            replaced[name].append(timed(partial(index.replace, current[article_id])))
            index.tidy()
    chunks = sum(len(a.chunks) for a in current.values())
    counted = {"ours": ours.index.state.docs}
    for name, fts in (("fts5-porter", porter), ("fts5-ourtokens", mine)):
        counted[name] = int(fts.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
        fts.close()
    if any(n != chunks for n in counted.values()):
        raise RuntimeError(f"after the replacements the indexes hold {counted} chunks, not {chunks}")

    def hit(found: list[Key], q: dict[str, Any]) -> bool:
        return any(supports(articles[a].chunk(i).text, a, q, real) for a, i in found)

    results: dict[str, Any] = {}
    for name, (index_name, _) in searchers.items():
        hits = [hit(found, q) for found, q in zip(top[name], questions, strict=True)]
        ours_hits = [hit(found, q) for found, q in zip(top["ours"], questions, strict=True)]
        overlaps = [
            len(set(a) & set(b)) / max(len(a), len(b), 1) for a, b in zip(top[name], top["ours"], strict=True)
        ]
        results[name] = {
            "index": index_name,
            "hit_at_5": round(sum(hits) / len(hits), 3),
            "hits": sum(hits),
            "won_over_ours": [
                q["id"] for q, h, o in zip(questions, hits, ours_hits, strict=True) if h and not o
            ],
            "lost_to_ours": [
                q["id"] for q, h, o in zip(questions, hits, ours_hits, strict=True) if o and not h
            ],
            "overlap_at_5": round(statistics.mean(overlaps), 3),
            "p50_ms": percentile_ms(latencies[name], 0.5),
            "p95_ms": percentile_ms(latencies[name], 0.95),
            "build_s": round(built[index_name], 3),
            "replace_one_ms": round(statistics.median(replaced[index_name]) * 1000, 1),
            "replace_one_ms_all": [round(t * 1000, 1) for t in replaced[index_name]],
            "disk_mb": round(sizes[index_name]["total"] / 2**20, 2),
            "of_which_text_copy_mb": round(sizes[index_name]["content"] / 2**20, 2),
        }
    return {
        "articles": len(articles),
        "chunks": sum(len(a.chunks) for a in articles.values()),
        "questions": len(questions),
        "queries_timed_per_system": PASSES * len(questions),
        "ourtokens_vocabulary_differences": vocabulary_differences,
        "systems": results,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "articles",
        "chunks",
        "system",
        "hit@5",
        "overlap@5 vs ours",
        "p50 ms",
        "p95 ms",
        "build s",
        "replace 1 ms",
        "disk MB (text copy)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        for name, r in row["systems"].items():
            shared = r["index"] != name
            cells = [
                str(row["articles"]),
                str(row["chunks"]),
                name,
                f"{r['hit_at_5']:.3f} ({r['hits']}/{row['questions']})",
                f"{r['overlap_at_5']:.2f}",
                str(r["p50_ms"]),
                str(r["p95_ms"]),
                "same index" if shared else f"{r['build_s']:.2f}",
                "same index" if shared else str(r["replace_one_ms"]),
                "same index" if shared else f"{r['disk_mb']} ({r['of_which_text_copy_mb']})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from evals.synth import write_distractor_corpus

    work = Path(tempfile.mkdtemp(prefix="fts5-compare-"))
    try:
        # Distractor i depends on i alone (evals/synth.py seeds each), so the smaller corpus is a prefix.
        synthetic = write_distractor_corpus(CORPUS, work / "synthetic", max(DISTRACTORS))
        rows = []
        for count in DISTRACTORS:
            articles = load_corpus(synthetic[:count])
            row = measure(articles, work / f"indexes-{count}")
            rows.append(row)
            print(f"[{row['articles']} articles, {row['chunks']} chunks] done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "python": platform.python_version(),
        "sqlite_version": sqlite3.sqlite_version,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "k": K,
        "passes": PASSES,
        "sizes": rows,
    }
    OUT.write_text(json.dumps(report, indent=2))
    print(markdown(rows))
    print(
        f"\nSQLite {sqlite3.sqlite_version}, Python {report['python']}, load {report['load_average_at_end']}"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
