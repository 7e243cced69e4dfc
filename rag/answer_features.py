"""Stage 5a: what the answer scorer sees: features of a candidate sentence and of the whole evidence.

The same functions compute the features when `evals/train_scorer.py` fits the weights on SQuAD and when
a question is answered, so the fitted model sees at query time exactly what it was fitted on. Each
feature is a plain number; the models in `rag/answer_model.py` weigh them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np

from rag.sparse import tokenize

# --- answer typing ---------------------------------------------------------------------------------
KINDS = ("number", "date", "person", "place")

_NUMBER = re.compile(
    r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
    r"hundred|thousand|million|billion|dozen)\b",
    re.IGNORECASE,
)
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_DATE = re.compile(
    rf"\b(1[0-9]\d\d|20\d\d|\d{{1,2}}(st|nd|rd|th)? century|{_MONTHS}|monday|tuesday|wednesday|thursday|"
    r"friday|saturday|sunday|spring|summer|autumn|winter|today|yesterday|\d0s)\b",
    re.IGNORECASE,
)
# A capitalised word that is not a sentence's first word: how names look in prose.
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)(?<![\"“‘(])\b[A-Z][\w’'-]*")
_WH_WORDS = frozenset("what which who whom whose when where why how i the a an in on of".split())
_WORD = re.compile(r"[\w’'-]+")
_DIGITS = re.compile(r"\d[\d,.]*")
_POSSESSIVE = re.compile(r"['’]s$")
# Two or more capitalised words in a row: how a person's name looks in prose ("Marko Djuric").
_FULL_NAME = re.compile(r"\b[A-Z][\w’'-]+(?:\s+[A-Z][\w’'-]+)+")


def expected_kind(question: str) -> str | None:
    """What sort of answer the question wants, from its wh-word: number, date, person, place or None."""
    q = question.lower()
    if re.search(
        r"\bhow (many|much|far|long|old|large|big|tall|high)\b|\bwhat (number|percentage|share|amount)\b", q
    ):
        return "number"
    if re.search(
        r"\bwhen\b|\bwhat (year|day|month|date|century|decade)\b|\bin which year\b|\bsince when\b", q
    ):
        return "date"
    if re.search(r"\bwho\b|\bwhom\b|\bwhose\b|\bwhich (person|man|woman|minister|president|leader)\b", q):
        return "person"
    if re.search(r"\bwhere\b|\bwhich (city|country|capital|place|venue|town|region|state|nation)\b", q):
        return "place"
    return None


@lru_cache(maxsize=16384)
def terms_of(text: str) -> frozenset[str]:
    """The text's search terms (as BM25 sees them), cached: candidate sentences and their neighbours
    come back with every question on the same topic."""
    return frozenset(tokenize([text])[0])


@lru_cache(maxsize=16384)
def _bigrams(text: str) -> frozenset[tuple[str, str]]:
    """Adjacent pairs of the text's search terms (stop words dropped, stemmed)."""
    terms = tokenize([text])[0]
    return frozenset(pairwise(terms))


def _words(text: str) -> list[str]:
    """Lower-cased words, possessives dropped ("serbia's" -> "serbia")."""
    return [_POSSESSIVE.sub("", w) for w in _WORD.findall(text.lower())]


def question_entities(question: str) -> list[str]:
    """The question's names and numbers (lower case): what the answer must be about, not what it says.

    A sentence about Serbia's minister does not answer a question about Ukraine's, however alike they
    read; these are the words whose absence from a sentence tells that apart.
    """
    found = [re.sub(r"['’]s$", "", m.group(0).lower()) for m in _CAPITALISED.finditer(question)]
    found += [m.group(0).rstrip(".,") for m in _DIGITS.finditer(question)]
    return list(dict.fromkeys(e.strip("’'") for e in found if e.strip("’'") not in _WH_WORDS))


def holds_entity(entity: str, words: set[str]) -> bool:
    """The entity is one of the words, or nearly starts one ("serbia" in "serbian", "ukraine" in
    "ukrainian": all but its last letter)."""
    if entity in words:
        return True
    stem = entity[: max(4, len(entity) - 1)]
    return len(entity) >= 4 and any(w.startswith(stem) for w in words)


def new_of_kind(sentence: str, kind: str | None, question_words: Collection[str]) -> bool:
    """Whether the sentence holds something of the asked kind that the question does not already say."""
    if kind is None:
        return any(_words(m.group(0))[0] not in question_words for m in _CAPITALISED.finditer(sentence))
    if kind == "number":
        return any(m.group(0).lower() not in question_words for m in _NUMBER.finditer(sentence))
    if kind == "date":
        return any(m.group(0).lower() not in question_words for m in _DATE.finditer(sentence))
    if kind == "person":
        return any(
            any(w not in question_words for w in _words(m.group(0))) for m in _FULL_NAME.finditer(sentence)
        )
    return any(_words(m.group(0))[0] not in question_words for m in _CAPITALISED.finditer(sentence))


@dataclass(frozen=True)
class Question:
    """The question, analysed once: its terms with their IDF, its entities, the kind of answer wanted."""

    text: str
    terms: dict[str, float]  # stemmed term -> IDF weight
    words: frozenset[str]  # lower-cased surface words
    entities: tuple[str, ...]
    kind: str | None

    @classmethod
    def parse(cls, text: str, idf: Callable[[str], float] | None = None) -> Question:
        terms = tokenize([text])[0]
        weigh = idf or (lambda _term: 1.0)
        return cls(
            text=text,
            terms={t: max(weigh(t), 0.0) + 1e-6 for t in dict.fromkeys(terms)},
            words=frozenset(_words(text)),
            entities=tuple(question_entities(text)),
            kind=expected_kind(text),
        )

    def overlap(self, tokens: Collection[str]) -> float:
        """Share of the question's terms among the tokens."""
        return sum(t in tokens for t in self.terms) / len(self.terms) if self.terms else 0.0

    def idf_overlap(self, tokens: Collection[str]) -> float:
        """IDF-weighted share of the question's terms among the tokens: rare words count most."""
        total = sum(self.terms.values())
        return sum(w for t, w in self.terms.items() if t in tokens) / total if total else 0.0

    def bigram_overlap(self, text: str) -> float:
        """Share of the question's adjacent content-word pairs that the text has adjacent too."""
        pairs = _bigrams(self.text)
        return len(pairs & _bigrams(text)) / len(pairs) if pairs else 0.0

    def entity_share(self, text: str) -> float:
        """Share of the question's entities the text holds (1 when the question names none)."""
        if not self.entities:
            return 1.0
        words = set(_words(text))
        return sum(holds_entity(e, words) for e in self.entities) / len(self.entities)


# --- sentence features ---------------------------------------------------------------------------
SENTENCE_FEATURES = (
    "cos_ctx",  # question vs the sentence's stored vector, read in its passage
    "cos_ctx_gap",  # ... minus the best candidate's
    "overlap",  # share of question terms in the sentence
    "idf_overlap",  # the same, IDF-weighted
    "idf_gap",  # ... minus the best candidate's
    "cos_x_idf",  # meaning and words agreeing
    "bigram_overlap",  # share of the question's adjacent word pairs the sentence repeats ("sticking points")
    "entity_share",  # share of the question's names and numbers in the sentence
    "entity_missing",  # the question names something the sentence lacks
    "neighbour_idf",  # the best IDF overlap of the sentences before and after it
    "new_kind",  # holds something of the asked kind the question does not say
    "kind_asked_lacking",  # a kind is asked and the sentence holds none
    "new_share",  # share of the sentence's terms that the question does not use
    "passage_rank",  # 1 / (1 + rank of its passage)
    "top_passage",  # it is in the first passage
    "fused_rel",  # its passage's fused score over the best passage's
    "agree",  # both retrievers found its passage
    "line_start",  # it opens a paragraph
    "position",  # where it sits in the article (0 start .. 1 end)
    "log_words",  # its length
)
LEADER_FEATURES = (
    *SENTENCE_FEATURES,
    "cos_alone",  # question vs the sentence embedded on its own
    "cos_alone_gap",  # ... minus the best leader's
    "cos_alone_x_idf",
)


@dataclass(frozen=True)
class SentenceContext:
    """What the features need to know about a candidate sentence besides its text."""

    text: str
    previous: str  # the sentences before and after it in its article ("" at either end)
    following: str
    passage_rank: int
    fused_rel: float
    agree: bool
    line_start: bool
    position: float


def sentence_features(
    question: Question, sentences: Sequence[SentenceContext], cos_ctx: np.ndarray
) -> np.ndarray:
    """One row of SENTENCE_FEATURES per sentence."""
    n = len(sentences)
    if n == 0:
        return np.zeros((0, len(SENTENCE_FEATURES)), dtype=np.float64)
    tokens = [terms_of(s.text) for s in sentences]
    rows = np.zeros((n, len(SENTENCE_FEATURES)), dtype=np.float64)
    idf = np.array([question.idf_overlap(t) for t in tokens])
    for i, (s, distinct) in enumerate(zip(sentences, tokens, strict=True)):
        share = question.entity_share(s.text)
        has_kind = new_of_kind(s.text, question.kind, question.words)
        rows[i] = (
            cos_ctx[i],
            cos_ctx[i] - cos_ctx.max(),
            question.overlap(distinct),
            idf[i],
            idf[i] - idf.max(),
            cos_ctx[i] * idf[i],
            question.bigram_overlap(s.text),
            share,
            float(share < 1.0),
            max(question.idf_overlap(terms_of(s.previous)), question.idf_overlap(terms_of(s.following))),
            float(has_kind),
            float(question.kind is not None and not has_kind),
            sum(t not in question.terms for t in distinct) / len(distinct) if distinct else 0.0,
            1.0 / (1 + s.passage_rank),
            float(s.passage_rank == 0),
            s.fused_rel,
            float(s.agree),
            float(s.line_start),
            s.position,
            math.log1p(len(s.text.split())),
        )
    return rows


def leader_features(base: np.ndarray, cos_alone: np.ndarray) -> np.ndarray:
    """SENTENCE_FEATURES rows of the leading sentences extended with their stand-alone cosine."""
    if len(base) == 0:
        return np.zeros((0, len(LEADER_FEATURES)), dtype=np.float64)
    idf = base[:, SENTENCE_FEATURES.index("idf_overlap")]
    extra = np.column_stack([cos_alone, cos_alone - cos_alone.max(), cos_alone * idf])
    return np.hstack([base, extra])


# --- evidence (question-level) features ------------------------------------------------------------
EVIDENCE_FEATURES = (
    "best_logit",  # the chosen sentence's score
    "margin",  # its lead over the next sentence
    "best_cos_alone",
    "best_idf_overlap",
    "best_entity_share",
    "best_entity_missing",
    "best_new_kind",
    "best_kind_lacking",
    "coverage",  # IDF-weighted share of the question's terms in the top passages
    "passages_entity_share",  # share of the question's entities in the top passages
    "top_fused",  # the best passage's fused retrieval score
    "best_agree",
    "best_missing_idf",  # the rarest question term the best sentence lacks ("third" in "the third crisis")
    "passages_missing_idf",  # the rarest question term the top passages lack
    "quote_lacks_kind",  # a number, date, name or place is asked and the quote holds no new one
)


def evidence_features(
    question: Question,
    leaders: np.ndarray,
    logits: np.ndarray,
    best: int,
    coverage: float,
    top_passages: str,
    top_fused: float,
    best_text: str,
    quote_text: str,
) -> np.ndarray:
    """One row of EVIDENCE_FEATURES: how well the best sentence, and the passages, answer at all."""
    order = np.sort(logits)[::-1]
    margin = float(order[0] - order[1]) if len(order) > 1 else 5.0
    column = {name: leaders[best, i] for i, name in enumerate(LEADER_FEATURES)}
    in_best, in_passages = terms_of(best_text), frozenset(tokenize([top_passages])[0])
    return np.array(
        [
            float(logits[best]),
            min(margin, 5.0),
            column["cos_alone"],
            column["idf_overlap"],
            column["entity_share"],
            column["entity_missing"],
            column["new_kind"],
            column["kind_asked_lacking"],
            coverage,
            question.entity_share(top_passages),
            top_fused,
            column["agree"],
            max((w for t, w in question.terms.items() if t not in in_best), default=0.0),
            max((w for t, w in question.terms.items() if t not in in_passages), default=0.0),
            float(question.kind is not None and not new_of_kind(quote_text, question.kind, question.words)),
        ]
    )
