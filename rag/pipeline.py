"""The pipeline wired together: ingest (load -> clean -> chunk -> embed -> index) and query
(resolve follow-up -> retrieve -> extractive draft -> generator). ``rag.ingest`` / ``rag.query`` call
one shared instance.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.answer import ExtractiveAnswerer
from rag.articles import article_id_for, load_article, scan_articles
from rag.chunking import chunk_article, sentence_spans
from rag.embeddings import Embedder
from rag.errors import ArticleError, ArticleNotFoundError, GeneratorError, QuestionError
from rag.followup import resolve_followup
from rag.generate import GenerationRequest, make_generator
from rag.grounding import Grounder
from rag.index import ArticleIndex
from rag.retrieve import Candidate, HybridRetriever
from rag.settings import Settings
from rag.types import CITATION_MARKER, Answer, Article, IndexedArticle, IngestReport, Passage, SkippedFile

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedder = Embedder.from_settings(settings)
        self.index = ArticleIndex(settings, self.embedder)
        self.retriever = HybridRetriever(self.index, self.embedder, settings)
        self.answerer = ExtractiveAnswerer(self.index, self.embedder, settings)
        self.grounder = Grounder(self.index, self.embedder, settings)
        self.generator = make_generator(settings)
        self._ready = threading.Lock()

    # --- ingest ------------------------------------------------------------------------------------
    def ingest(self, paths: Iterable[str | Path] | None = None, *, rebuild: bool = False) -> IngestReport:
        """Index new and changed articles, drop deleted ones; a second run changes nothing."""
        started = time.perf_counter()
        targets = [Path(p) for p in paths] if paths is not None else [Path(self.settings.corpus_dir)]
        # A full comparison with Chroma on a first build, a rebuild, or to finish an interrupted ingest;
        # otherwise only the articles this ingest touches are compared.
        full = rebuild or not self.index.exists or self.index.interrupted is not None
        with self.index.writing(str(p) for p in targets):
            if rebuild:
                self.index.wipe()
            else:
                self.index.check_compatible()
            report = IngestReport()
            known = {} if rebuild else {a.source: a.stamp for a in self.index.articles.values()}
            scan = scan_articles(targets, max_bytes=self.settings.max_file_bytes, known=known)
            report.skipped = scan.skipped
            by_source = {a.source: a.id for a in self.index.articles.values()}
            report.unchanged = [by_source[source] for source in scan.unchanged]
            articles = self._plan(scan.articles, report)
            touched = None if full else set(report.added + report.updated + report.removed)
            report.chunks_embedded, report.sentences_embedded = self.index.sync(
                articles, only=touched, progress=self.settings.progress
            )
            if report.changed or full or not self.retriever.sparse.load(self.index.generation):
                self.retriever.sparse.update(articles, self.index.generation)
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    def _plan(self, loaded: list[Article], report: IngestReport) -> dict[str, IndexedArticle]:
        """The article set after this ingest: the old one, minus gone files, plus what was loaded."""
        current = dict(self.index.articles)
        skipped_sources = {str(Path(s.path).resolve()) for s in report.skipped}
        for article_id, indexed in list(current.items()):
            if not Path(indexed.source).is_file() or indexed.source in skipped_sources:
                report.removed.append(article_id)
                del current[article_id]
        texts = {hashlib.sha256(a.text.encode()).hexdigest(): a.id for a in current.values()}
        for candidate in loaded:
            article = self._unique_id(candidate, current)
            previous = current.get(article.id)
            if previous is not None and previous.content_hash == article.content_hash:
                report.unchanged.append(article.id)
                current[article.id] = previous.model_copy(update={"stamp": article.stamp})  # touched only
                continue
            digest = hashlib.sha256(article.text.encode()).hexdigest()
            twin = texts.get(digest)
            if twin is not None and twin != article.id:
                report.skipped.append(
                    SkippedFile(path=article.source, reason=f"same text as article '{twin}'")
                )
                continue
            texts[digest] = article.id
            chunks = chunk_article(article, self.settings.chunk_size, self.settings.chunk_overlap_sentences)
            current[article.id] = IndexedArticle(
                **article.model_dump(),
                chunks=[(c.start, c.end) for c in chunks],
                sentences=[(s.start, s.end) for s in sentence_spans(article.text)],
            )
            (report.updated if previous is not None else report.added).append(article.id)
        return current

    def add_files(self, files: Iterable[tuple[str | Path, str]]) -> IngestReport:
        """Copy files into the corpus folder and index them, so they survive a restart.

        ``files`` are (path of the uploaded bytes, name the user gave the file). Only the name's last
        component is kept (no ``../``), unreadable files are refused with the reason, and an existing
        file of the same name with other content is kept by giving the new one a numbered name.
        """
        corpus = Path(self.settings.corpus_dir)
        corpus.mkdir(parents=True, exist_ok=True)
        saved: list[Path] = []
        refused: list[SkippedFile] = []
        for source, name in files:
            safe_name = Path(str(name).replace("\\", "/")).name.lstrip(".") or "article.txt"
            try:
                load_article(
                    Path(source),
                    max_bytes=self.settings.max_file_bytes,
                    article_id=article_id_for(Path(safe_name)),
                    suffix=Path(safe_name).suffix,
                )
            except (ArticleError, UnicodeDecodeError, OSError) as exc:
                refused.append(SkippedFile(path=safe_name, reason=str(exc)))
                continue
            saved.append(_copy_without_clobbering(Path(source), corpus / safe_name))
        report = self.ingest(saved) if saved else IngestReport()
        report.skipped = refused + report.skipped
        return report

    @staticmethod
    def _unique_id(article: Article, current: dict[str, IndexedArticle]) -> Article:
        """Two files with the same name in different folders must not overwrite each other."""
        existing = current.get(article.id)
        if existing is None or existing.source == article.source:
            return article
        suffix = hashlib.sha1(article.source.encode()).hexdigest()[:6]
        return article.model_copy(update={"id": f"{article.id}-{suffix}"})

    def ensure_ready(self) -> None:
        """Build the index on first use and finish an ingest that a crash interrupted."""
        with self._ready:
            interrupted = self.index.interrupted
            if interrupted is not None:
                log.warning("Completing an interrupted ingest of %s", interrupted or "the corpus")
                self.ingest(interrupted or None)
            elif not self.index.exists:
                self.ingest()
            else:
                self.index.check_compatible()
            self.index.collection  # noqa: B018  (open Chroma now, not inside the first visitor's request)

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
        self.ensure_ready()
        search_query, failure = self._standalone(cleaned, history)
        draft = self._draft(cleaned, search_query)
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
            return resolve_followup(question, history), _fallback_notice(str(exc))
        return condensed or resolve_followup(question, history), None

    def _draft(self, question: str, search_query: str) -> Answer:
        """The extractive answer: whether the articles answer at all, and the fallback for any generator."""
        candidates = self.retriever.search(search_query, max(self.settings.top_k, 5))
        passages = [self._passage(c) for c in candidates]
        coverage = self.retriever.coverage(search_query, [c.chunk.text for c in candidates[:3]])
        return self.answerer.answer(
            question,
            search_query,
            candidates,
            self.index.articles,
            passages,
            coverage,
            idf=self.retriever.sparse_index().idf,
        )

    def _checked(self, answer: Answer, draft: Answer) -> Answer:
        """The product's promise, enforced for every generator: each quote is the article's text at its
        offsets and each marker names a citation; an answer that breaks it is replaced by the draft."""
        articles = self.index.articles
        numbers = {c.n for c in answer.citations}
        for c in answer.citations:
            article = articles.get(c.article_id)
            if article is None or article.text[c.start : c.end] != c.quote:
                return self._fallback(draft, f"Generator '{answer.generator}' returned a misquoted citation.")
        markers = {int(n) for n in CITATION_MARKER.findall(answer.text)}
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
        try:
            return self.index.articles[article_id]
        except KeyError:
            raise ArticleNotFoundError(f"No article '{article_id}' in the index.") from None

    def articles(self) -> list[IndexedArticle]:
        self.ensure_ready()
        return list(self.index.articles.values())


def _fallback_notice(why: str) -> str:
    return f"{why} Showing the answer quoted from the articles instead."


def _copy_without_clobbering(source: Path, target: Path) -> Path:
    """Copy to ``target``, or to ``name-2.ext``… when a different file already has that name."""
    data = source.read_bytes()
    candidate, n = target, 1
    while candidate.exists() and candidate.read_bytes() != data:
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    candidate.write_bytes(data)
    return candidate
