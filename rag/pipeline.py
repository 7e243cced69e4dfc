"""The pipeline wired together: ingest (load -> clean -> chunk -> embed -> index) and query
(resolve follow-up -> retrieve -> extractive draft -> generator). ``rag.ingest`` / ``rag.query`` call
one shared instance.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.answer import ExtractiveAnswerer
from rag.article_store import CatalogEntry, text_hash
from rag.articles import SUPPORTED_SUFFIXES, article_id_for, folder_stamps, load_article, scan_articles
from rag.chunking import chunk_article, sentence_spans
from rag.embeddings import Embedder
from rag.errors import (
    ArticleError,
    ArticleNotFoundError,
    GeneratorError,
    IndexBusyError,
    IndexChangedError,
    QuestionError,
)
from rag.followup import resolve_followup, validate_history
from rag.generate import GenerationRequest, make_generator
from rag.grounding import Grounder
from rag.index import ArticleIndex, Plan
from rag.rerank import load_reranker
from rag.retrieve import Candidate, HybridRetriever
from rag.settings import Settings
from rag.types import Answer, Article, IndexedArticle, IngestReport, Passage, SkippedFile

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedder = Embedder.from_settings(settings)
        self.index = ArticleIndex(settings, self.embedder)
        self.retriever = HybridRetriever(self.index, self.embedder, settings)
        reranker = (
            load_reranker(str(settings.model_cache_dir), settings.embedding_workers)
            if settings.answer_reranker
            else None
        )
        self.answerer = ExtractiveAnswerer(self.index, self.embedder, settings, reranker)
        self.grounder = Grounder(self.index, self.embedder, settings)
        self.generator = make_generator(settings)
        self._ready = threading.Lock()
        self._prepared = False

    # --- ingest ------------------------------------------------------------------------------------
    def ingest(
        self,
        paths: Iterable[str | Path] | None = None,
        *,
        rebuild: bool = False,
        full: bool = False,
        on_wait: Callable[[], None] | None = None,
        wait_s: float | None = None,
    ) -> IngestReport:
        """Index new and changed articles, drop deleted ones; a second run changes nothing.

        Another ingest holding the index is waited for (up to ``wait_s``, by default ``ingest_wait_s``;
        ``on_wait`` is told once when waiting starts), and the plan is made from the state it committed,
        so no ingest writes back a stale copy of what another one added. ``full`` compares every stored
        article with every store (``rag check --repair``), as a first build and the completion of a
        crashed ingest do.
        """
        started = time.perf_counter()
        targets = [Path(p) for p in paths] if paths is not None else [Path(self.settings.corpus_dir)]
        with self.index.writing((str(p) for p in targets), on_wait, wait_s) as resumed:
            # A full comparison with every store on a first build, a rebuild, or to finish an ingest whose
            # writer died; otherwise only the articles this ingest touches are compared.
            full = full or rebuild or resumed or not self.index.exists
            if rebuild:
                self.index.wipe()
            else:
                self.index.check_compatible()
            if resumed:  # see every chunk the dead writer added (reopening Chroma costs ~0.1 s at 3,000)
                self.index.dense.reopen()
            self.index.refresh(force=True)  # catch up with other writers' commits (reopens Chroma if any)
            catalog = self.index.catalog()
            report = IngestReport()
            known = {e.source: e.stamp for e in catalog.values()}
            scan = scan_articles(
                targets,
                max_bytes=self.settings.max_file_bytes,
                known=known,
                max_title_chars=self.settings.max_title_chars,
            )
            report.skipped = scan.skipped
            by_source = {e.source: e.id for e in catalog.values()}
            report.unchanged = [by_source[source] for source in scan.unchanged]
            seen = {*scan.unchanged, *(a.source for a in scan.articles)}
            plan = self._plan(catalog, scan.articles, report, targets, seen)
            report.chunks_embedded, report.sentences_embedded = self.index.sync(
                plan, full=full, progress=self.settings.progress
            )
        if self.answerer.reranker is not None and report.chunks_embedded:
            # An ingest that ran the model exports the reranker too (once per machine), so that the
            # first question, perhaps in another process, neither waits for it nor imports torch.
            self.answerer.reranker.prepare()
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    def _plan(
        self,
        catalog: dict[str, CatalogEntry],
        loaded: list[Article],
        report: IngestReport,
        targets: list[Path],
        seen: set[str],
    ) -> Plan:
        """The article set after this ingest: the committed one, minus the files under ``targets`` that
        are gone or now refused, plus what was loaded.

        Only files under the ingest's own targets can be found gone: against a shared Chroma server the
        other machines' articles come from paths this machine does not have. A file the scan ``seen``
        exists; only the others are looked for (a stat each took 0.6 s of a 1.2 s re-ingest at 30,000).
        """
        plan = Plan(catalog=dict(catalog), previous=catalog)
        current = plan.catalog
        skipped_sources = {str(Path(s.path).resolve()) for s in report.skipped}
        roots = [str(t.resolve()) for t in targets]
        for article_id, entry in list(current.items()):
            if not any(entry.source == root or entry.source.startswith(root + os.sep) for root in roots):
                continue
            gone = entry.source not in seen and not os.path.isfile(entry.source)
            if gone or entry.source in skipped_sources:
                report.removed.append(article_id)
                plan.removals.append(article_id)
                del current[article_id]
        texts = {e.text_hash: e.id for e in current.values()}
        touched: dict[str, str] = {}  # id -> new stamp, for files whose text did not change
        for candidate in loaded:
            article = self._unique_id(candidate, current)
            previous = current.get(article.id)
            if previous is not None and previous.content_hash == article.content_hash:
                report.unchanged.append(article.id)
                touched[article.id] = article.stamp
                continue
            digest = text_hash(article.text)
            twin = texts.get(digest)
            if twin is not None and twin != article.id:
                reason = f"same text as article '{twin}'"
                report.skipped.append(SkippedFile(path=article.source, reason=reason))
                continue
            texts[digest] = article.id
            chunks = chunk_article(article, self.settings.chunk_size, self.settings.chunk_overlap_sentences)
            indexed = IndexedArticle(
                **article.model_dump(),
                chunks=[(c.start, c.end) for c in chunks],
                sentences=[(s.start, s.end) for s in sentence_spans(article.text)],
            )
            plan.upserts.append(indexed)
            current[article.id] = CatalogEntry.of(indexed)
            (report.updated if previous is not None else report.added).append(article.id)
        stale_stamps = [i for i, stamp in touched.items() if current[i].stamp != stamp]
        for article_id, article in self.index.store.get(stale_stamps).items():  # read again only when touched
            plan.upserts.append(article.model_copy(update={"stamp": touched[article_id]}))
            current[article_id] = CatalogEntry.of(plan.upserts[-1])
        return plan

    def add_files(
        self, files: Iterable[tuple[str | Path, str]], on_wait: Callable[[], None] | None = None
    ) -> IngestReport:
        """Copy files into the corpus folder and index them, so they survive a restart.

        ``files`` are (path of the uploaded bytes, name the user gave the file). Only the name's last
        component is kept (no ``../``), unreadable files are refused with the reason, and an existing
        file of the same name with other content is kept by giving the new one a numbered name.
        Nothing refused stays in the corpus folder: a file the ingest skips (a duplicate, say) is
        removed again, and so is every file this call added if the ingest fails.
        """
        corpus = Path(self.settings.corpus_dir)
        corpus.mkdir(parents=True, exist_ok=True)
        saved: list[Path] = []
        created: list[Path] = []
        refused: list[SkippedFile] = []
        for source, name in files:
            safe_name = Path(str(name).replace("\\", "/")).name.lstrip(".") or "article.txt"
            suffix = Path(safe_name).suffix.lower()
            if suffix not in SUPPORTED_SUFFIXES:  # "...txt" became "txt": judge the name that is saved
                reason = f"unsupported file type '{suffix or safe_name}' (use .txt, .md or .html)"
                refused.append(SkippedFile(path=safe_name, reason=reason))
                continue
            try:
                load_article(
                    Path(source),
                    max_bytes=self.settings.max_file_bytes,
                    article_id=article_id_for(Path(safe_name)),
                    suffix=suffix,
                    max_title_chars=self.settings.max_title_chars,
                )
            except (ArticleError, UnicodeDecodeError, OSError) as exc:
                refused.append(SkippedFile(path=safe_name, reason=str(exc)))
                continue
            target, new = _copy_without_clobbering(Path(source), corpus / safe_name)
            saved.append(target)
            if new:
                created.append(target)
        try:
            report = self.ingest(saved, on_wait=on_wait) if saved else IngestReport()
        except BaseException:
            _remove(created)
            raise
        skipped = {Path(s.path).resolve() for s in report.skipped}
        _remove([path for path in created if path.resolve() in skipped])
        report.skipped = refused + report.skipped
        return report

    @staticmethod
    def _unique_id(article: Article, current: dict[str, CatalogEntry]) -> Article:
        """Two files with the same name in different folders must not overwrite each other."""
        existing = current.get(article.id)
        if existing is None or existing.source == article.source:
            return article
        suffix = hashlib.sha1(article.source.encode()).hexdigest()[:6]
        return article.model_copy(update={"id": f"{article.id}-{suffix}"})

    def ensure_ready(self) -> None:
        """Once per process: build the index on first use, complete an ingest whose writer died, repair
        a damaged BM25 index, and take in files added to, changed in or deleted from the corpus folder
        since the last ingest (a stat per file when nothing changed)."""
        if self._prepared:
            return
        with self._ready:
            if self._prepared:
                return
            interrupted = self.index.interrupted
            if interrupted is not None:
                log.warning("Completing an interrupted ingest of %s", interrupted or "the corpus")
                self.ingest(interrupted or None)
            warming = None
            if not self.index.exists:
                self.ingest()
            else:
                self._load_model_while_importing_chroma()
                self.index.check_compatible()
                warming = self._warm_dense_index()
                if self.corpus_changed():
                    self._sync_corpus_unless_busy()
            if not self.index.sparse_ready():
                log.warning("Repairing the BM25 index in %s", self.index.root)
                self.ingest()
            if warming is not None:
                warming.join()
            self.index.dense.collection  # noqa: B018  (open Chroma now, not inside the first visitor's request)
            self._prepared = True

    def _load_model_while_importing_chroma(self) -> None:
        """Load the embedding model and the answer reranker on a thread while chromadb is imported here:
        ONNX Runtime builds its sessions without the interpreter lock and the import holds it, so side
        by side they cost the longer of the two. A failure to load is left to the compatibility check
        (which needs the model's dimension) and to the first question, which report it."""

        def load() -> None:
            self.embedder.dimension  # noqa: B018
            if self.answerer.reranker is not None:
                self.answerer.reranker.prepare()

        thread = _start_beside(
            load, "rag-load-model", "Loading a model early failed; its first use loads it again"
        )
        self.index.dense.import_library()
        thread.join()

    def _warm_dense_index(self) -> threading.Thread:
        """Open Chroma here, then load its nearest-neighbour graph in a thread beside the start-up's other
        checks (``DenseIndex.warm``). Opening holds the interpreter lock, so it goes first: a thread that
        opened it would starve the corpus check's 30,000 file stats. A failure while loading is left to
        the first search, which meets and reports it."""
        self.index.dense.collection  # noqa: B018
        return _start_beside(
            self.index.dense.warm,
            "rag-warm-dense-index",
            "Loading the dense index early failed; the first search loads it",
        )

    def _sync_corpus_unless_busy(self) -> None:
        """Take in the corpus folder's changes now, unless another ingest is writing: a chat that starts
        meanwhile answers from the committed state rather than wait (the next start takes them in)."""
        try:
            self.ingest(wait_s=0)
        except IndexBusyError:
            log.warning("Another ingest is running; the corpus folder's changes wait for the next start")

    def corpus_changed(self) -> bool:
        """Whether the corpus folder holds a file the index does not have as it is, or lacks one it has."""
        corpus = Path(self.settings.corpus_dir)
        known = {e.source: e.stamp for e in self.index.catalog().values()}
        present = folder_stamps(corpus)
        if any(known.get(source) != stamp for source, stamp in present.items()):
            return True
        root = str(corpus.resolve()) + os.sep
        return any(source.startswith(root) and source not in present for source in known)

    # --- query -------------------------------------------------------------------------------------
    def validate(self, question: str) -> str:
        """The question with control characters and runs of white space removed, or QuestionError."""
        printable = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in question or "")
        cleaned = " ".join(printable.split())
        if not any(ch.isalnum() for ch in cleaned):
            raise QuestionError("Please ask a question (the text was empty or had no words).")
        if len(cleaned) > self.settings.max_question_chars:
            raise QuestionError(
                f"The question is {len(cleaned):,} characters long; the limit is "
                f"{self.settings.max_question_chars:,} (RAG_MAX_QUESTION_CHARS). Please shorten it."
            )
        return cleaned

    def query(
        self,
        question: str,
        history: Sequence[dict[str, Any]] | None = None,
        *,
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        """The checked answer; ``on_token`` sees the answer text as it is written, for streaming."""
        for piece in self.stream(question, history):
            if isinstance(piece, Answer):
                return piece
            if on_token is not None:
                on_token(piece)
        raise AssertionError("a generator ended without an Answer")  # pragma: no cover

    def stream(
        self, question: str, history: Sequence[dict[str, Any]] | None = None
    ) -> Iterator[str | Answer]:
        """Pieces of the answer text as the generator writes them, then the final, checked ``Answer``
        (whose text can differ from the pieces: unsupported citations are removed after the fact)."""
        cleaned = self.validate(question)
        history = validate_history(
            history,
            max_messages=self.settings.max_history_messages,
            max_chars=self.settings.max_history_chars,
        )
        self.ensure_ready()
        search_query, failure = self._standalone(cleaned, history)
        draft = self._draft_on_committed_state(cleaned, search_query)
        if not draft.found or failure is not None:
            yield draft.text
            yield draft.model_copy(update={"notice": failure}) if failure else draft
            return
        request = GenerationRequest(cleaned, search_query, draft.passages, draft, self.grounder)
        try:
            for piece in self.generator.stream(request):
                if isinstance(piece, Answer):
                    yield self._checked(piece, draft)
                    return
                yield piece
        except GeneratorError as exc:
            yield self._fallback(draft, str(exc))

    def _standalone(self, question: str, history: Sequence[dict[str, Any]] | None) -> tuple[str, str | None]:
        """The question to search with, and why the generator failed if it did (it is not asked again)."""
        if not history:
            return question, None
        try:
            condensed = self.generator.condense(question, history)
        except GeneratorError as exc:
            return self._resolved(question, history), _fallback_notice(str(exc))
        return condensed or self._resolved(question, history), None

    def _resolved(self, question: str, history: Sequence[dict[str, Any]]) -> str:
        return resolve_followup(question, history, max_names=self.settings.followup_names)

    def _draft_on_committed_state(self, question: str, search_query: str) -> Answer:
        """The draft, read from the latest committed state (retrieval catches up before it searches);
        retried once if an ingest committed while it was being read and deleted something it needed (the
        retry's search catches up with that commit)."""
        try:
            return self._draft(question, search_query)
        except IndexChangedError:
            return self._draft(question, search_query)

    def _draft(self, question: str, search_query: str) -> Answer:
        """The extractive answer: whether the articles answer at all, and the fallback for any generator."""
        candidates, coverage = self.draft_evidence(search_query)
        passages = [self._passage(c) for c in candidates]
        return self.answerer.answer(
            question, search_query, candidates, self.index.articles, passages, coverage
        )

    def draft_evidence(self, search_query: str) -> tuple[list[Candidate], float]:
        """The passages the draft answer reads, and how much of the query's vocabulary the leading ones
        hold (the confidence fit asks the same)."""
        candidates = self.retriever.search(
            search_query, max(self.settings.top_k, self.settings.draft_passages)
        )
        leading = candidates[: self.settings.coverage_passages]
        return candidates, self.retriever.coverage(search_query, [c.chunk.text for c in leading])

    def _checked(self, answer: Answer, draft: Answer) -> Answer:
        """The product's promise, enforced for every generator: each quote is the article's text at its
        offsets and each marker names a citation; an answer that breaks it is replaced by the draft."""
        articles = self.index.articles
        numbers = {c.n for c in answer.citations}
        for c in answer.citations:
            article = articles.get(c.article_id)
            if article is None or article.text[c.start : c.end] != c.quote:
                return self._fallback(draft, f"Generator '{answer.generator}' returned a misquoted citation.")
        markers = {m.n for m in answer.markers()}  # an article's own "[2]" inside a quote is not one
        if not markers <= numbers:
            return self._fallback(draft, f"Generator '{answer.generator}' cited a passage it did not quote.")
        return answer

    @staticmethod
    def _fallback(draft: Answer, why: str) -> Answer:
        return draft.model_copy(update={"notice": _fallback_notice(why)})

    def _passage(self, candidate: Candidate) -> Passage:
        chunk = candidate.chunk
        return Passage(
            article_id=chunk.article_id,
            title=self.index.articles[chunk.article_id].title,
            text=chunk.text,
            start=chunk.start,
            end=chunk.end,
            score=round(candidate.fused, 6),
        )

    def article(self, article_id: str) -> IndexedArticle:
        self.ensure_ready()
        self.index.refresh()
        try:
            return self.index.articles[article_id]
        except KeyError:
            raise ArticleNotFoundError(f"No article '{article_id}' in the index.") from None

    def articles(self) -> list[IndexedArticle]:
        self.ensure_ready()
        self.index.refresh()
        return list(self.index.store.get(self.index.catalog()).values())


def _start_beside(work: Callable[[], object], name: str, failure: str) -> threading.Thread:
    """Start-up work on a thread beside the main one. A failure there is only logged: the same work runs
    again where it is needed (the check or the first question), which reports it."""

    def run() -> None:
        try:
            work()
        except Exception:
            log.debug(failure, exc_info=True)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _fallback_notice(why: str) -> str:
    return f"{why} Showing the answer quoted from the articles instead."


def _copy_without_clobbering(source: Path, target: Path) -> tuple[Path, bool]:
    """Copy to ``target``, or to ``name-2.ext``… when a different file already has that name; also
    whether the file is new (an identical file of that name is left as it was)."""
    data = source.read_bytes()
    candidate, n = target, 1
    while candidate.exists() and candidate.read_bytes() != data:
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    if candidate.exists():
        return candidate, False
    candidate.write_bytes(data)
    return candidate, True


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
