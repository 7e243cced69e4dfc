"""Stage 5: the extractive answer: the sentence (or tightest clause) that answers, quoted and cited.

Candidate sentences come from the top retrieved passages. A cheap first pass ranks them all by meaning
(their stored vectors against the question's), by the question's words they contain, by their passage's
rank, and by whether they hold the kind of thing asked for (a number for "how many", a name for "who").
The few that lead are then re-scored: by default with their own embedding (the stored vectors read each
sentence in its passage), or, with RAG_ANSWER_RERANKER, re-read with the question by the cross-encoder
fine-tuned on SQuAD (``rerank.py``), whose calibrated probability orders them and is the confidence. The
best is quoted verbatim with its offsets, after the short answer when a name, place, date or number was
asked for (``short_answer.py``); a second one from another article joins it when it scores nearly as
well, or, for a "which two …" question, when it too is likely to answer. Weak best evidence means the
articles do not answer: we say so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.errors import ModelNotFoundError
from rag.negation import unmatched_negation
from rag.retrieve import Candidate, jaccard, shingles
from rag.settings import Settings
from rag.short_answer import expected_kind, short_answer
from rag.sparse import tokenize
from rag.types import Answer, Citation, IndexedArticle, Passage, Span

if TYPE_CHECKING:
    from rag.embeddings import Embedder
    from rag.index import ArticleIndex
    from rag.rerank import AnswerReranker

NOT_FOUND = "The articles do not say."
# What `make train` fitted for the hand-set scorer's confidence (evals/fit_confidence.py).
CONFIDENCE_CARD = Path(__file__).parent / "models" / "answer_confidence.json"
_WORD = re.compile(r"\S+")
_NUMBER = re.compile(
    r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|hundred|thousand|million|billion)\b",
    re.IGNORECASE,
)
_DATE = re.compile(
    r"\b(1[89]\d\d|20\d\d|january|february|march|april|may|june|july|august|september|"
    r"october|november|december|monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
    r"week|month|year|today|yesterday)\b",
    re.IGNORECASE,
)
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z’'-]+")
_TERMINAL = re.compile(r"[.!…:][\"'”’)\]]*$")
# Shorter than this is a fragment ("Come."), not an answer.
_MIN_ANSWER_WORDS = 4
# A following sentence this short is a clipped continuation ("Half an hour in a plane."), kept with it.
_SHORT_SENTENCE_WORDS = 8
# Unpunctuated lines shorter than this are headlines and section titles.
_HEADLINE_MAX_WORDS = 15
# Two or more capitalised words in a row: how a person's name looks in news text.
_FULL_NAME = re.compile(r"\b[A-Z][\w’'-]+(?:\s+\[?[A-Z][\w’'-]+\]?)+")
# A sentence opening like this continues the one before it ("They advocate …", "This means …").
_CONTINUATION = re.compile(r"^[\"“‘']?(they|he|she|it|this|these|that|those|such|his|her|their|its)\b", re.I)
_SEVERAL = re.compile(
    r"\bwhich (two|three|four|several|\w{3,}(?<!s)s)\b|\bwhat (two|three|four|several)\b|\bwho all\b|"
    r"\bboth\b|\bwhich of\b",
    re.I,
)
_CLAUSE = re.compile(r"(?<=[,;:—–])\s+|\s+(?=[—–]\s)")


@lru_cache(maxsize=1)
def fitted_negation_penalty(path: Path = CONFIDENCE_CARD) -> float:
    """The negation penalty `make train` fitted for the hand-set scorer (its card says how)."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["hand_set"]["negation_penalty"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(
            f"The answer confidence card {path} is missing or unreadable ({exc})."
        ) from exc


@dataclass
class Scorer:
    """Weights of the sentence score (settings.score_weight_*); together they sum to about 1 so the
    threshold reads as a score."""

    meaning: float
    words: float
    rank: float
    kind: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Scorer:
        return cls(
            settings.score_weight_meaning,
            settings.score_weight_words,
            settings.score_weight_rank,
            settings.score_weight_kind,
        )


@dataclass(frozen=True)
class Sentence:
    article: IndexedArticle
    index: int  # position in article.sentences
    span: Span
    passage_rank: int

    @property
    def text(self) -> str:
        return self.article.text[self.span.start : self.span.end]


@dataclass
class Evidence:
    article: IndexedArticle
    index: int  # position in article.sentences
    span: Span
    score: float
    passage_rank: int

    @property
    def text(self) -> str:
        return self.article.text[self.span.start : self.span.end]


def has_kind(sentence: str, kind: str | None, question: str) -> bool:
    """Whether the sentence holds something of the kind asked for that the question does not already say."""
    if kind == "number":
        return bool(_NUMBER.search(sentence))
    if kind == "date":
        return bool(_DATE.search(sentence))
    if kind in ("person", "place"):
        asked = {w.lower() for w in re.findall(r"\w+", question)}
        pattern = _FULL_NAME if kind == "person" else _PROPER
        return any(
            any(w.lower() not in asked for w in re.findall(r"\w+", m.group(0)))
            for m in pattern.finditer(sentence)
        )
    return False


def asks_for_several(question: str) -> bool:
    """ "Which two capitals …", "which cities …", "who all …", "both …": the answer may lie in several
    articles."""
    return bool(_SEVERAL.search(question))


def is_statement(sentence: str) -> bool:
    """A sentence that can answer: not a question, a headline or section title, or a fragment."""
    words = len(_WORD.findall(sentence))
    if words < _MIN_ANSWER_WORDS or sentence.rstrip("\"'”’) ").endswith("?"):
        return False
    return words >= _HEADLINE_MAX_WORDS or bool(_TERMINAL.search(sentence))


def _is_title(sentence: str, article: IndexedArticle) -> bool:
    """The headline repeated in the body says what the article is about, not what it reports; but an
    article's only sentence is its content even when its title was taken from it (a file with no title
    of its own). Treating any full sentence equal to the title as content lost a shipped question."""
    if len(article.sentences) == 1:
        return False
    return sentence.rstrip(" .").lower() == article.title.rstrip(" .").lower()


def quote(n: int, article: IndexedArticle, span: Span, score: float) -> Citation:
    """The citation for ``article.text[span]``: the quote is cut from the text at the offsets given, so
    it is verbatim by construction, whichever generator chose the span."""
    return Citation(
        n=n,
        article_id=article.id,
        title=article.title,
        quote=article.text[span.start : span.end],
        start=span.start,
        end=span.end,
        score=round(float(np.clip(score, 0, 1)), 4),
    )


def overlap(question_tokens: set[str], tokens: list[str]) -> float:
    """Share of the question's terms that the text contains."""
    return len(question_tokens & set(tokens)) / len(question_tokens) if question_tokens else 0.0


def word_overlap(question_tokens: set[str], text: str) -> float:
    return overlap(question_tokens, tokenize([text])[0])


class ExtractiveAnswerer:
    def __init__(
        self,
        index: ArticleIndex,
        embedder: Embedder,
        settings: Settings,
        reranker: AnswerReranker | None = None,
    ) -> None:
        """Without a ``reranker`` (the default) the leading sentences are re-scored by the hand-set
        first-pass score with their stand-alone embedding."""
        self.index = index
        self.embedder = embedder
        self.settings = settings
        self.scorer = Scorer.from_settings(settings)
        self.reranker = reranker

    @property
    def threshold(self) -> float:
        """The abstention threshold on Answer.confidence: the setting, else the fitted one."""
        if self.settings.min_answer_score is not None:
            return self.settings.min_answer_score
        if self.reranker is not None:
            return self.reranker.card.threshold
        return self.settings.hand_set_min_answer_score

    def candidate_sentences(
        self, candidates: list[Candidate], articles: Mapping[str, IndexedArticle]
    ) -> list[Sentence]:
        """Statements in the top passages, each once, in passage-rank order."""
        seen: set[tuple[str, int]] = set()
        texts: set[str] = set()
        found: list[Sentence] = []
        for rank, cand in enumerate(candidates):
            article = articles[cand.chunk.article_id]
            for index in article.sentences_in(cand.chunk.start, cand.chunk.end):
                span = Span(*article.sentences[index])
                text = article.text[span.start : span.end]
                if (article.id, index) in seen or text in texts:
                    continue
                seen.add((article.id, index))
                texts.add(text)
                if is_statement(text) and not _is_title(text, article):
                    found.append(Sentence(article, index, span, rank))
        return found

    def first_pass(self, question: str, sentences: list[Sentence]) -> tuple[np.ndarray, np.ndarray]:
        """The cheap score of every candidate: meaning from the stored sentence vectors, shared words,
        passage rank and answer kind, with the hand-set weights (it only chooses the contenders); and
        the cosine it used (the meaning part)."""
        texts = [s.text for s in sentences]
        q_tokens = set(tokenize([question])[0])
        kind = expected_kind(question)
        question_vector = self.embedder.embed_query(question)
        meaning = self.index.sentence_vectors([(s.article.id, s.index) for s in sentences]) @ question_vector
        w = self.scorer
        scores = np.array(
            [
                w.meaning * cosine
                + w.words * overlap(q_tokens, tokens)
                + w.rank / (1 + s.passage_rank)
                + w.kind * has_kind(text, kind, question)
                for s, text, tokens, cosine in zip(sentences, texts, tokenize(texts), meaning, strict=True)
            ]
        )
        return scores, meaning

    def first_order(
        self, question: str, sentences: list[Sentence]
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The candidates' indices best first by the first pass (its leading ``rescored`` are the
        contenders re-scored), with the first-pass scores and cosines."""
        scores, cosines = self.first_pass(question, sentences)
        return [int(i) for i in np.argsort(-scores, kind="stable")], scores, cosines

    def score(self, question: str, sentences: list[Sentence], coverage: float = 0.0) -> list[Evidence]:
        """The first pass over every candidate, then the leading few re-scored, best first: re-read with
        the question by the reranker (its probability takes the first pass's score into account), or,
        without it, with their own embedding in place of the stored one.

        The stored sentence vectors were read in their passages, so a sentence leans towards its
        neighbours' topic; that ranks candidates well, but only a reading of the sentence with the
        question tells a sentence that answers from one that is merely about the same thing.
        """
        if not sentences:
            return []
        first, first_scores, stored = self.first_order(question, sentences)
        contenders = first[: self.rescored]
        chosen = [sentences[i].text for i in contenders]
        if self.reranker is not None:
            # Only the contenders were read with the question; the rest score 0 so that nothing compares
            # a first-pass score with a probability.
            scores = np.zeros(len(sentences))
            scores[contenders] = self.reranker.probabilities(
                question, chosen, first_scores[contenders], coverage
            )
        else:
            question_vector = self.embedder.embed_query(question)
            alone = self.embedder.embed_cached(chosen) @ question_vector
            scores = first_scores.copy()
            scores[contenders] += self.scorer.meaning * (alone - stored[contenders])
        # The contenders, now scored alike, lead; the rest keep their order (read in context, their
        # scores run a little high, so they are not compared with the contenders' again).
        order = [*sorted(contenders, key=lambda i: -scores[i]), *first[len(contenders) :]]
        return [
            Evidence(
                sentences[i].article,
                sentences[i].index,
                sentences[i].span,
                float(scores[i]),
                sentences[i].passage_rank,
            )
            for i in order
        ]

    def tighten(self, evidence: Evidence, question: str) -> Span:
        """Quote the best window of clauses when the whole sentence is longer than an answer may be."""
        text = evidence.text
        limit = self.settings.answer_max_words
        if len(_WORD.findall(text)) <= limit:
            return evidence.span
        cuts = [0] + [m.end() for m in _CLAUSE.finditer(text)] + [len(text)]
        clauses = [Span(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]
        q_tokens = set(tokenize([question])[0])
        best: tuple[float, Span] | None = None
        for i in range(len(clauses)):
            for j in range(i, len(clauses)):
                window = text[clauses[i].start : clauses[j].end]
                if len(_WORD.findall(window)) > limit:
                    break
                key = word_overlap(q_tokens, window) + len(window) / (100 * len(text))  # ties: longer
                if best is None or key > best[0]:
                    best = (key, Span(clauses[i].start, clauses[j].end))
        if best is None:  # a single clause longer than the limit: cut at a word boundary
            words = list(_WORD.finditer(text))
            best = (0.0, Span(0, words[limit - 1].end()))
        chosen = best[1]
        start, end = evidence.span.start + chosen.start, evidence.span.start + chosen.end
        stripped = evidence.article.text[start:end]
        end -= len(stripped) - len(stripped.rstrip(" ,;:—–"))
        start += len(stripped) - len(stripped.lstrip())
        return Span(start, end)

    def extend_list(self, article: IndexedArticle, span: Span) -> Span:
        """A sentence that introduces a list ("… include:") answers with the list items that follow it."""
        text = article.text
        if not text[span.start : span.end].rstrip().endswith(":"):
            return span
        end = span.end
        words = len(_WORD.findall(text[span.start : span.end]))
        while end < len(text):
            line_end = text.find("\n", end + 1)
            line_end = len(text) if line_end < 0 else line_end
            line = text[end:line_end]
            if not line.strip() or words + len(_WORD.findall(line)) > self.settings.answer_max_words:
                break
            words += len(_WORD.findall(line))
            end = line_end
        return Span(span.start, end)

    def with_context(self, best: Evidence, question: str, ranked: list[Evidence]) -> Span:
        """The best sentence, with the neighbours on its line that it cannot do without.

        News prose often states the topic in one sentence and the fact asked for in the next ("European
        nations … play a vital role. They advocate for a swift resolution …"), and a very short sentence
        ("Minsk is our ally.") leans on the one before it: quoting the lone best sentence misses the answer.
        """
        span = self.tighten(best, question)
        if span != best.span:
            return span
        text, sentences, i = best.article.text, best.article.sentences, best.index
        limit = self.settings.answer_max_words

        def words(start: int, end: int) -> int:
            return len(_WORD.findall(text[start:end]))

        def same_line(a: int, b: int) -> bool:
            return (
                0 <= a < len(sentences)
                and 0 <= b < len(sentences)
                and "\n" not in text[sentences[a][1] : sentences[b][0]]
            )

        if words(span.start, span.end) <= _SHORT_SENTENCE_WORDS and same_line(i - 1, i):
            previous = sentences[i - 1]
            if words(previous[0], span.end) <= limit:
                span = Span(previous[0], span.end)
        if not same_line(i, i + 1):
            return span
        nxt = Span(*sentences[i + 1])
        sentence = text[nxt.start : nxt.end]
        if words(span.start, nxt.end) > limit or sentence.rstrip("\"'”’) ").endswith("?"):
            return span
        score = next((e.score for e in ranked if e.article.id == best.article.id and e.index == i + 1), 0.0)
        close = best.score - score <= self.settings.continuation_margin
        if close or _CONTINUATION.match(sentence) or words(nxt.start, nxt.end) <= _SHORT_SENTENCE_WORDS:
            return Span(span.start, nxt.end)
        return span

    def pick(self, ranked: list[Evidence], question: str = "") -> list[Evidence]:
        """The best sentence, and one from another article when it is nearly as good and says more; for
        a question that asks for several things ("which two capitals …", "who all …"), the other
        article's best sentence joins whenever it too is likely to answer."""
        best = ranked[0]
        chosen = [best]
        several = asks_for_several(question)
        for other in ranked[1 : 1 + self.settings.second_article_candidates]:
            close = best.score - other.score <= self.settings.second_article_margin
            if other.article.id == best.article.id or not (
                close or (several and other.score >= self.threshold)
            ):
                continue
            if jaccard(shingles(other.text), shingles(best.text)) > self.settings.dedup_threshold:
                continue
            chosen.append(other)
            break
        return chosen

    def cite(self, ranked: list[Evidence], question: str) -> list[Citation]:
        citations = []
        for n, evidence in enumerate(self.pick(ranked, question), start=1):
            span = self.extend_list(evidence.article, self.with_context(evidence, question, ranked))
            citations.append(quote(n, evidence.article, span, evidence.score))
        return citations

    @property
    def rescored(self) -> int:
        """How many leading candidates the second pass re-reads: the reranker is dearer per sentence."""
        if self.reranker is not None:
            return self.settings.reranker_rescore
        return self.settings.answer_rescore

    @property
    def negation_penalty(self) -> float:
        """The hand-set scorer's penalty for a negated question answered by a quote that negates nothing:
        the setting, else the one `make train` fitted."""
        if self.settings.negation_penalty is not None:
            return self.settings.negation_penalty
        return fitted_negation_penalty()

    def confidence(self, best: float, coverage: float, question: str, citations: list[Citation]) -> float:
        """The reranker's probability that the best sentence answers; with the hand-set scorer, its score
        blended with term coverage and docked when the quote lacks what was asked ("how many …" answered
        without a number is no answer, however well the rest matches; nor is "what did X not do?"
        answered by what X did)."""
        if self.reranker is not None:
            return round(best, 4)
        weight = self.settings.coverage_weight
        value = (1 - weight) * best + weight * coverage
        kind = expected_kind(question)
        if kind in ("number", "date") and not any(has_kind(c.quote, kind, question) for c in citations):
            value -= self.settings.missing_kind_penalty
        if unmatched_negation(question, " ".join(c.quote for c in citations)):
            value -= self.negation_penalty
        return round(value, 4)

    def answer(
        self,
        question: str,
        search_query: str,
        candidates: list[Candidate],
        articles: Mapping[str, IndexedArticle],
        passages: list[Passage],
        coverage: float,
    ) -> Answer:
        """``coverage``: how much of the question's vocabulary the top passages contain (0..1)."""
        sentences = self.candidate_sentences(candidates[: self.settings.top_k], articles)
        ranked = self.score(question, sentences, coverage)
        citations = self.cite(ranked, question) if ranked else []
        confidence = self.confidence(ranked[0].score if ranked else 0.0, coverage, question, citations)
        context = {
            "confidence": confidence,
            "passages": passages,
            "question": question,
            "search_query": search_query,
        }
        if not citations or confidence < self.threshold:
            return Answer(text=NOT_FOUND, found=False, **context)
        text = " ".join(f"{c.quote} [{c.n}]" for c in citations)
        span = short_answer(question, citations[0].quote)
        short = citations[0].quote[span.start : span.end] if span is not None else None
        if short is not None:
            text = f"{short} — {text}"
        return Answer(text=text, found=True, citations=citations, short_answer=short, **context)
