"""Stage 5: the extractive answer: the sentence (or tightest clause) that answers, quoted and cited.

Candidate sentences come from the top retrieved passages. A logistic model fitted on SQuAD questions
run through this pipeline (`rag/answer_model.py`, features in `rag/answer_features.py`) ranks them by
meaning, the question's words and names they hold, whether they hold the kind of thing asked for, and
their passage's retrieval; the leaders are re-ranked with their own embedding. The best is quoted
verbatim with its offsets, after a short answer (the name, place, date or number asked for) cut from
it; sentences from other articles join it when the question asks for several things and they score
nearly as well. A second fitted model gives the probability that the quote answers the question: below
``settings.min_answer_score`` the answer is that the articles do not say.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rag.answer_features import (
    Question,
    SentenceContext,
    evidence_features,
    expected_kind,
    leader_features,
    new_of_kind,
    sentence_features,
)
from rag.answer_model import AnswerModel, load_model
from rag.retrieve import Candidate, jaccard, shingles
from rag.settings import Settings
from rag.sparse import tokenize
from rag.types import Answer, Citation, IndexedArticle, Passage, Span

if TYPE_CHECKING:
    from rag.embeddings import Embedder
    from rag.index import ArticleIndex

__all__ = ["NOT_FOUND", "ExtractiveAnswerer", "expected_kind", "has_kind", "quote", "short_answer"]

NOT_FOUND = "The articles do not say."
_WORD = re.compile(r"\S+")
_TERMINAL = re.compile(r"[.!…:][\"'”’)\]]*$")
# Shorter than this is a fragment ("Come."), not an answer.
_MIN_ANSWER_WORDS = 4
# A following sentence this short is a clipped continuation ("Half an hour in a plane."), kept with it.
_SHORT_SENTENCE_WORDS = 8
# Unpunctuated lines shorter than this are headlines and section titles.
_HEADLINE_MAX_WORDS = 15
# A sentence opening like this continues the one before it ("They advocate …", "This means …").
_CONTINUATION = re.compile(r"^[\"“‘']?(they|he|she|it|this|these|that|those|such|his|her|their|its)\b", re.I)
_CLAUSE = re.compile(r"(?<=[,;:—–])\s+|\s+(?=[—–]\s)")
# "Which two capitals …", "who all …", "both …", "which cities …": the answer may lie in several articles.
_SEVERAL = re.compile(
    r"\b(which|what) (two|three|four|several|both|\w+(?<!s)s)\b|\bwho all\b|\bboth\b|\bwhich of\b", re.I
)

# --- short answers: spans of the quote that are the thing asked for ---------------------------------
_UNIT = (
    r"(?:\s+(?:%|per ?cent|percent|million|billion|trillion|thousand|hundred|dozen|"
    r"[a-z]+(?:metres|meters)|km|kilometres|kilometers|miles|metres|meters|feet|tons|tonnes|years?|months?|"
    r"weeks?|days?|hours?|minutes?|people|dollars|euros|pounds|troops|soldiers|members|countries|times))*"
)
_NUMBER_PHRASE = re.compile(
    r"(?:(?:about|around|nearly|almost|over|under|more than|less than|some|up to|at least)\s+)?"
    r"(?<![\w-])(?:[$€£]\s?)?(?:\d[\d,.]*\d|\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"twenty|thirty|forty|fifty|hundred|thousand|dozens?|hundreds|thousands|millions)\b(?!\s+of\b))" + _UNIT,
    re.IGNORECASE,
)
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DATE_PHRASE = re.compile(
    rf"\b(?:\d{{1,2}}\s+{_MONTH}(?:\s+\d{{4}})?|{_MONTH}(?:\s+\d{{1,2}}(?:st|nd|rd|th)?)?(?:,?\s+\d{{4}})?|"
    r"(?:early |late |mid-)?(?:1[0-9]\d\d|20\d\d)s?|\d{1,2}(?:st|nd|rd|th) century|"
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday))\b"
)
_NAME_PHRASE = re.compile(
    r"\b[A-Z][\w’'.-]*(?:\s+(?:(?:of|de|da|von|van|al|bin|la|du|del|the)\s+)?[A-Z][\w’'.-]*)*"
)
# Capitalised words that open sentences and clauses without naming anything.
_NOT_NAMES = frozenset(
    "the a an he she it they we i this that these those his her their its in on at by for from with "
    "after before during while when where but and or as if however also there here some many most one "
    "according our my mr mrs ms dr".split()
)
# Words that stand before a name without being it: "Serbian Foreign Minister Marko Djuric".
_TITLES = frozenset(
    "foreign prime deputy vice minister president secretary general chancellor king queen prince princess "
    "ambassador spokesman spokeswoman spokesperson senator governor mayor director chairman chairwoman chief "
    "professor sir lord lady pope saint st emperor empress duke former first lady envoy commander "
    "colonel captain judge justice bishop archbishop head leader".split()
)
_NATIONALITY = re.compile(r"^[a-z]+(ian|ean|ese|ish|ic|an|i)$")


def has_kind(sentence: str, kind: str | None, question: str) -> bool:
    """Whether the sentence holds something of the kind asked for that the question does not already say."""
    return kind is not None and new_of_kind(sentence, kind, Question.parse(question).words)


def short_answer(question: str, quote_text: str) -> Span | None:
    """The phrase of the quote that is the name, place, date or number asked for, as offsets into the
    quote; None when the question asks for something else or the quote holds no such phrase.

    Of several such phrases, the one nearest the words the quote shares with the question wins: in
    "Serbian Foreign Minister Marko Djuric stated that Belgrade …", asked who offered, the name
    next to the title the question uses.
    """
    kind = expected_kind(question)
    if kind is None:
        return None
    asked = Question.parse(question).words
    found: list[Span] = []
    if kind == "number":
        found = [Span(m.start(), m.end()) for m in _NUMBER_PHRASE.finditer(quote_text)]
    elif kind == "date":
        found = [Span(m.start(), m.end()) for m in _DATE_PHRASE.finditer(quote_text)]
    else:
        for m in _NAME_PHRASE.finditer(quote_text):
            words = [w.lower().strip("’'.") for w in m.group(0).split()]
            while words and words[0] in _NOT_NAMES:  # "The Kremlin" keeps "Kremlin"
                words = words[1:]
            if kind == "person":  # "Serbian Foreign Minister Marko Djuric" keeps "Marko Djuric"
                while len(words) > 1 and (words[0] in _TITLES or _NATIONALITY.match(words[0])):
                    words = words[1:]
            if not words:
                continue
            start = m.end() - len(" ".join(m.group(0).split()[-len(words) :]))
            text = quote_text[start : m.end()].rstrip(".’'")
            if all(w.strip("’'.s") in asked or w in asked for w in words):
                continue
            if kind == "person" and any(
                "-" in w and w[0].isupper() for w in m.group(0).split()[-len(words) :]
            ):
                continue  # "Russia-Ukraine": two places joined, not a person
            found.append(Span(start, start + len(text)))
    found = [f for f in found if not set(quote_text[f.start : f.end].lower().split()) <= asked]
    if not found:
        return None
    q_tokens = set(tokenize([question])[0])
    anchors = [
        m.start() for m in re.finditer(r"[\w’'-]+", quote_text) if set(tokenize([m.group(0)])[0]) & q_tokens
    ]
    if not anchors:
        return found[0]

    def key(span: Span) -> tuple[bool, int]:
        # A person is named in full in news prose ("Marko Djuric"); a lone capitalised word is more
        # often a place or an organisation.
        single = kind == "person" and " " not in quote_text[span.start : span.end]
        return single, min(min(abs(a - span.start), abs(a - span.end)) for a in anchors)

    return min(found, key=key)


def is_statement(sentence: str) -> bool:
    """A sentence that can answer: not a question, a headline or section title, or a fragment."""
    words = len(_WORD.findall(sentence))
    if words < _MIN_ANSWER_WORDS or sentence.rstrip("\"'”’) ").endswith("?"):
        return False
    return words >= _HEADLINE_MAX_WORDS or bool(_TERMINAL.search(sentence))


def _is_title(sentence: str, article: IndexedArticle) -> bool:
    """The headline repeated in the body says what the article is about, not what it reports."""
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


@dataclass(frozen=True)
class Sentence:
    article: IndexedArticle
    index: int  # position in article.sentences
    span: Span
    passage_rank: int
    candidate: Candidate

    @property
    def text(self) -> str:
        return self.article.text[self.span.start : self.span.end]


@dataclass
class Evidence:
    article: IndexedArticle
    index: int  # position in article.sentences
    span: Span
    score: float  # fitted probability that the sentence holds the answer
    passage_rank: int

    @property
    def text(self) -> str:
        return self.article.text[self.span.start : self.span.end]


@dataclass
class Ranking:
    """The candidate sentences ranked, with what the fitted models saw (kept for training and tests)."""

    question: Question
    sentences: list[Sentence]
    evidence: list[Evidence]  # best first
    leader_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    leader_logits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_leader: int = 0


class ExtractiveAnswerer:
    def __init__(
        self, index: ArticleIndex, embedder: Embedder, settings: Settings, model: AnswerModel | None = None
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.settings = settings
        self._model = model

    @property
    def model(self) -> AnswerModel:
        """The fitted scorer, read on first use (`make train` writes it)."""
        if self._model is None:
            self._model = load_model()
        return self._model

    @model.setter
    def model(self, value: AnswerModel) -> None:
        self._model = value

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
                    found.append(Sentence(article, index, span, rank, cand))
        return found

    @staticmethod
    def context(sentence: Sentence, top_fused: float) -> SentenceContext:
        """Where the sentence sits: its neighbours, its passage's retrieval, its place in the article."""
        article, i = sentence.article, sentence.index
        spans = article.sentences
        cand = sentence.candidate
        return SentenceContext(
            text=sentence.text,
            previous=article.text[spans[i - 1][0] : spans[i - 1][1]] if i > 0 else "",
            following=article.text[spans[i + 1][0] : spans[i + 1][1]] if i + 1 < len(spans) else "",
            passage_rank=sentence.passage_rank,
            fused_rel=cand.fused / top_fused if top_fused > 0 else 0.0,
            agree=cand.dense_rank is not None and cand.sparse_rank is not None,
            line_start=i == 0 or "\n" in article.text[spans[i - 1][1] : spans[i][0]],
            position=i / max(len(spans) - 1, 1),
        )

    def rank(
        self, question: Question, sentences: list[Sentence], cos_alone: Callable[[list[int]], np.ndarray]
    ) -> Ranking:
        """Every sentence scored by the sentence model; the leaders re-scored with their stand-alone
        embedding by the leader model, and placed first.

        The stored sentence vectors were read in their passages, so a sentence leans towards its
        neighbours' topic; that ranks candidates well, but the few that lead are re-embedded on their
        own, so that the one chosen says what was asked, not what its paragraph is about.
        """
        if not sentences:
            return Ranking(question, sentences, [])
        question_vector = self.embedder.embed_query(question.text)
        cos_ctx = self.index.sentence_vectors([(s.article.id, s.index) for s in sentences]) @ question_vector
        top_fused = max(s.candidate.fused for s in sentences)
        rows = sentence_features(question, [self.context(s, top_fused) for s in sentences], cos_ctx)
        first = self.model.sentence.logit(rows)
        order = [int(i) for i in np.argsort(-first, kind="stable")]
        leaders = order[: max(self.settings.answer_rescore, 1)]
        lead_rows = leader_features(rows[leaders], cos_alone(leaders))
        second = self.model.leader.logit(lead_rows)
        by_leader = sorted(range(len(leaders)), key=lambda j: -second[j])
        scored = [(leaders[j], float(second[j])) for j in by_leader]
        scored += [(i, float(first[i])) for i in order[len(leaders) :]]
        evidence = [
            Evidence(
                sentences[i].article,
                sentences[i].index,
                sentences[i].span,
                float(1 / (1 + np.exp(-logit))),
                sentences[i].passage_rank,
            )
            for i, logit in scored
        ]
        return Ranking(question, sentences, evidence, lead_rows, second, by_leader[0])

    def stand_alone(self, question: str, sentences: list[Sentence]) -> Callable[[list[int]], np.ndarray]:
        """Cosines of the question with the chosen sentences embedded on their own (a model run each,
        cached: the same sentences come back with the next question on the topic)."""

        def cosines(chosen: list[int]) -> np.ndarray:
            question_vector = self.embedder.embed_query(question)
            result: np.ndarray = (
                self.embedder.embed_cached([sentences[i].text for i in chosen]) @ question_vector
            )
            return result

        return cosines

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

    def pick(self, ranked: list[Evidence], question: str) -> list[Evidence]:
        """The best sentence, and for a question asking for several things ("which two …", "who all …"),
        the best from each other article that scores nearly as well and says something else."""
        best = ranked[0]
        chosen = [best]
        if not _SEVERAL.search(question):
            return chosen
        for other in ranked[1 : self.settings.answer_rescore]:
            if len(chosen) > self.settings.max_articles_cited - 1:
                break
            if any(other.article.id == c.article.id for c in chosen):
                continue
            if other.score < self.settings.other_article_ratio * best.score:
                continue
            if any(
                jaccard(shingles(other.text), shingles(c.text)) > self.settings.dedup_threshold
                for c in chosen
            ):
                continue
            chosen.append(other)
        return chosen

    def cite(self, ranked: list[Evidence], question: str) -> list[Citation]:
        citations = []
        for n, evidence in enumerate(self.pick(ranked, question), start=1):
            span = self.extend_list(evidence.article, self.with_context(evidence, question, ranked))
            citations.append(quote(n, evidence.article, span, evidence.score))
        return citations

    def confidence(
        self, ranking: Ranking, coverage: float, candidates: list[Candidate], citations: list[Citation]
    ) -> tuple[float, np.ndarray]:
        """The fitted probability that the best sentence answers the question, and the features it read."""
        if not ranking.evidence:
            return 0.0, np.zeros(0)
        top = candidates[:3]
        row = evidence_features(
            ranking.question,
            ranking.leader_rows,
            ranking.leader_logits,
            ranking.best_leader,
            coverage,
            " ".join(c.chunk.text for c in top),
            top[0].fused if top else 0.0,
            ranking.evidence[0].text,
            " ".join(c.quote for c in citations),
        )
        return float(self.model.evidence.probability(row[None, :])[0]), row

    def evaluate(
        self,
        question: str,
        candidates: list[Candidate],
        articles: Mapping[str, IndexedArticle],
        coverage: float,
        idf: Callable[[str], float] | None = None,
    ) -> tuple[Ranking, list[Citation], float]:
        """Ranked evidence, the citations chosen from it, and the probability that they answer."""
        parsed = Question.parse(question, idf)
        sentences = self.candidate_sentences(candidates[: self.settings.top_k], articles)
        ranking = self.rank(parsed, sentences, self.stand_alone(question, sentences))
        citations = self.cite(ranking.evidence, question) if ranking.evidence else []
        confidence, _row = self.confidence(ranking, coverage, candidates, citations)
        return ranking, citations, confidence

    def answer(
        self,
        question: str,
        search_query: str,
        candidates: list[Candidate],
        articles: Mapping[str, IndexedArticle],
        passages: list[Passage],
        coverage: float,
        idf: Callable[[str], float] | None = None,
    ) -> Answer:
        """``coverage``: how much of the question's vocabulary the top passages contain (0..1); ``idf``:
        the corpus weight of a search term (rare terms say more about a sentence matching)."""
        _ranking, citations, confidence = self.evaluate(question, candidates, articles, coverage, idf)
        context = {
            "confidence": round(confidence, 4),
            "passages": passages,
            "question": question,
            "search_query": search_query,
        }
        if not citations or confidence < self.settings.min_answer_score:
            return Answer(text=NOT_FOUND, found=False, **context)
        quoted = " ".join(f"{c.quote} [{c.n}]" for c in citations)
        span = short_answer(question, citations[0].quote)
        short = citations[0].quote[span.start : span.end] if span is not None else None
        text = f"{short} — {quoted}" if short else quoted
        return Answer(text=text, found=True, citations=citations, short_answer=short, **context)
