"""Stage 5b: the short answer: the name, place, date or number asked for, cut from the quote that holds it.

A reader who asks "Who offered to host the talks?" wants a name first, then the evidence. The phrase is
found in the chosen quote by its shape (capitalised words, dates, numbers with their units), and of
several the one nearest the words the quote shares with the question wins, since news prose puts a
name beside the title or verb the question uses. It is a span of the quote, so it is verbatim too.
"""

from __future__ import annotations

import re

from rag.sparse import tokenize
from rag.types import Span

_UNIT = (
    r"(?:\s+(?:%|per ?cent|percent|million|billion|trillion|thousand|hundred|dozen|km|kilometres|kilometers|"
    r"miles|metres|meters|feet|tons|tonnes|years?|months?|weeks?|days?|hours?|minutes?|people|dollars|euros|"
    r"pounds|troops|soldiers|members|countries|times))*"
)
_NUMBER_PHRASE = re.compile(
    r"(?:(?:about|around|nearly|almost|over|under|more than|less than|some|up to|at least)\s+)?"
    r"(?<![\w-])(?:[$€£]\s?)?(?:\d[\d,.]*\d|\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|"
    r"twelve|twenty|thirty|forty|fifty|hundred|thousand|dozens?|hundreds|thousands|millions)\b(?!\s+of\b))"
    + _UNIT,
    re.IGNORECASE,
)
_MONTHS = "January February March April May June July August September October November December".split()
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTH = f"(?:{'|'.join(_MONTHS)})"
_DATE_PHRASE = re.compile(
    rf"\b(?:\d{{1,2}}\s+{_MONTH}(?:\s+\d{{4}})?|{_MONTH}(?:\s+\d{{1,2}}(?:st|nd|rd|th)?)?(?:,?\s+\d{{4}})?|"
    r"(?:early |late |mid-)?(?:1[0-9]\d\d|20\d\d)s?|\d{1,2}(?:st|nd|rd|th) century|"
    rf"(?:{'|'.join(_WEEKDAYS)}))\b"
)
_NAME_PHRASE = re.compile(
    r"\b[A-Z][\w’'.-]*(?:\s+(?:(?:of|de|da|von|van|al|bin|la|du|del)\s+)?[A-Z][\w’'.-]*)*"
)
# A word that ends its sentence: a full stop after four or more letters ("Zelensky."), where "Dr." and
# "U.S." are abbreviations inside a name.
_SENTENCE_END = re.compile(r"[^.]{4,}\.")
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
    "professor sir lord lady pope saint st emperor empress duke former first envoy commander "
    "colonel captain judge justice bishop archbishop head leader".split()
)
_NATIONALITY = re.compile(r"^[a-z]+(ian|ean|ese|ish|ic|an|i)$")
# The endings of a nationality that place names seldom share ("Japan", "Oman" end in -an, "Mali",
# "Helsinki" in -i, so those stay): "the Belarusian capital" names no city, Minsk does. A question
# about a country or a region may be answered by one ("Which region invented it?" "European").
_DEMONYM = re.compile(r"^[a-z]+(ian|ean|ese|ish)$")
_ASKS_COUNTRY = re.compile(r"\b(countr(y|ies)|regions?|nations?|states?|continents?)\b", re.IGNORECASE)
# Capitalised, but a date: never the person or the place asked for ("published Wednesday").
_CALENDAR = frozenset(w.lower() for w in _MONTHS + _WEEKDAYS)
_WORDS = re.compile(r"[\w’'-]+")


def expected_kind(question: str) -> str | None:
    """What sort of answer the question wants, from its wh-word: number, date, person, place or None."""
    q = question.lower()
    if re.search(r"\bhow (many|much|far|long|old)\b|\bwhat (number|percentage|share)\b", q):
        return "number"
    if re.search(r"\bwhen\b|\bdate\b|\bwhat (year|day|month)\b|\bsince when\b|\bin (what|which) year\b", q):
        return "date"
    if re.search(r"\bwho\b|\bwhom\b|\bwhose\b", q):
        return "person"
    if re.search(r"\bwhere\b|\b(which|what) (city|country|capital|place|venue|town|region|state)\b", q):
        return "place"
    return None


def _asked_words(question: str) -> set[str]:
    """The question's words as written and bare: "Serbia's protests" says Serbia."""
    return {form for w in _WORDS.findall(question) for form in (w.lower().strip("’'"), _bare(w))}


def _bare(word: str) -> str:
    return word.lower().strip("’'.").removesuffix("’s").removesuffix("'s")


def _names_nothing_asked(word: str, kind: str, demonyms: bool) -> bool:
    """Whether a lone capitalised word cannot be the person or place asked for: a weekday or a month is a
    date; a nationality ("Serbian") names no one, nor a place unless ``demonyms``."""
    if _bare(word) in _CALENDAR:
        return True
    if kind == "person":
        return bool(_NATIONALITY.match(word.lower()))
    return kind == "place" and not demonyms and bool(_DEMONYM.match(_bare(word)))


def _names(quote: str, kind: str, asked: set[str], demonyms: bool) -> list[Span]:
    """Capitalised phrases that the question does not already say, shorn of leading function words (and,
    for a person, of titles and nationalities: "Serbian Foreign Minister Marko Djuric" is "Marko Djuric")."""
    found = []
    for m in _NAME_PHRASE.finditer(quote):
        words = [
            (w.start() + m.start(), w.end() + m.start(), w.group(0)) for w in re.finditer(r"\S+", m.group(0))
        ]
        while words and _bare(words[0][2]) in _NOT_NAMES:
            words = words[1:]
        ends = [i for i, (*_, w) in enumerate(words[:-1]) if _SENTENCE_END.fullmatch(w)]
        if ends:  # "… with Putin and Zelensky. This direct appeal …": the name ends with its sentence
            words = words[: ends[0] + 1]
        if kind == "person":
            while len(words) > 1 and (
                words[0][2].lower() in _TITLES or _NATIONALITY.match(words[0][2].lower())
            ):
                words = words[1:]
            if any("-" in w for *_, w in words):  # "Russia-Ukraine": two places joined, not a person
                continue
        if len(words) == 1 and _names_nothing_asked(words[0][2], kind, demonyms):
            continue
        if not words or all(_bare(w) in asked for *_, w in words):
            continue
        start, end = words[0][0], words[-1][1]
        end -= len(quote[start:end]) - len(quote[start:end].rstrip(".’'"))
        found.append(Span(start, end))
    return found


def candidates(quote: str, kind: str, asked: set[str], *, demonyms: bool = False) -> list[Span]:
    """Every phrase of the quote of the kind asked for that is not already in the question (a lone
    nationality stands for a place only when ``demonyms``)."""
    if kind == "number":
        found = [Span(m.start(), m.end()) for m in _NUMBER_PHRASE.finditer(quote)]
    elif kind == "date":
        found = [Span(m.start(), m.end()) for m in _DATE_PHRASE.finditer(quote)]
    else:
        found = _names(quote, kind, asked, demonyms)
    return [f for f in found if not {w.lower() for w in quote[f.start : f.end].split()} <= asked]


def short_answer(question: str, quote: str) -> Span | None:
    """The phrase of ``quote`` that is the name, place, date or number asked for, as offsets into it;
    None when the question asks for something else or the quote holds no such phrase."""
    kind = expected_kind(question)
    if kind is None:
        return None
    found = candidates(quote, kind, _asked_words(question), demonyms=bool(_ASKS_COUNTRY.search(question)))
    if not found:
        return None
    terms = set(tokenize([question])[0])
    anchors = [m.start() for m in _WORDS.finditer(quote) if set(tokenize([m.group(0)])[0]) & terms]
    if not anchors:
        return found[0]

    def distance(span: Span) -> tuple[bool, int]:
        # A person is named in full in news prose ("Marko Djuric"); a lone capitalised word is more
        # often a place or an organisation.
        lone = kind == "person" and " " not in quote[span.start : span.end]
        return lone, min(min(abs(a - span.start), abs(a - span.end)) for a in anchors)

    return min(found, key=distance)
