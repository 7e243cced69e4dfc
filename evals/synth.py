"""Deterministic synthetic corpora for benchmarks and fault tests, written from real article text.

With no network there is no archive to download; a word-trigram model of real news articles writes
documents with realistic length, vocabulary and sentence structure. A fixed seed makes every corpus
reproducible. The real articles are not included: callers copy them in when they need them.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from rag.articles import load_articles
from rag.chunking import sentence_spans


def source_sentences(corpus_dir: Path) -> list[str]:
    articles, _ = load_articles([corpus_dir], max_bytes=10_000_000)
    sentences = [a.text[s.start : s.end] for a in articles for s in sentence_spans(a.text)]
    return [s for s in sentences if len(s.split()) >= 5]


class MarkovWriter:
    """A word-trigram model of the source text that writes new sentences in its vocabulary and style.

    Recombining whole sentences would repeat every source sentence hundreds of times in a large corpus,
    which no real archive does and which buries the one article that truly answers. A trigram model of a
    few articles has the same fault in a milder form: most word pairs have one continuation, so it copies
    long runs of a source sentence. So no more than ``max_run`` consecutive words match any source, and
    every name and number is swapped: generated sentences share the vocabulary and rhythm
    of news prose without restating its facts.
    """

    def __init__(self, sentences: list[str], max_run: int = 6) -> None:
        self.source = set(sentences)
        self.max_run = max_run
        self.starts: list[tuple[str, str]] = []
        self.next: dict[tuple[str, str], list[str]] = {}
        self.runs: set[tuple[str, ...]] = set()  # every max_run + 1 consecutive words of a source
        for sentence in sentences:
            words = sentence.split()
            if len(words) < 3:
                continue
            self.starts.append((words[0], words[1]))
            for a, b, c in zip(words, words[1:], [*words[2:], "\0"], strict=False):
                self.next.setdefault((a, b), []).append(c)
            lowered = [w.lower() for w in words]
            self.runs.update(zip(*(lowered[i:] for i in range(max_run + 1)), strict=False))
        # A word the sources write capitalised more often than not is a name, wherever it stands (scraped
        # text has "minsk" too); other capitalised words are names except at the start of a sentence.
        cased = Counter(_WORD.findall(" ".join(sentences)))
        self.names = {w.lower() for w, n in cased.items() if w[0].isupper() and n > cased[w.lower()]}

    def sentence(self, rng: random.Random, max_words: int = 45, min_words: int = 8) -> str:
        while True:
            words = self._walk(rng, max_words)
            text = " ".join(words)
            if len(words) >= min_words and text not in self.source:
                text = text if text[-1] in '.!?”"' else text.rstrip(",;:") + "."
                return self._disguise(text, rng)

    def _walk(self, rng: random.Random, max_words: int) -> list[str]:
        """Words along the trigram chain, never ``max_run`` + 1 in a row that a source has in a row
        (where the chain offers no other way on, the sentence ends)."""
        a, b = rng.choice(self.starts)
        words = [a, b]
        while len(words) < max_words:
            tail = tuple(w.lower() for w in words[-self.max_run :])
            options = [
                c
                for c in self.next.get((a, b), [])
                if c == "\0" or len(tail) < self.max_run or (*tail, c.lower()) not in self.runs
            ]
            if not options:
                break
            c = rng.choice(options)
            if c == "\0":
                break
            words.append(c)
            a, b = b, c
        return words

    def _disguise(self, sentence: str, rng: random.Random) -> str:
        def swap(match: re.Match[str]) -> str:
            word = match.group(0)
            capitalised_inside = word[0].isupper() and match.start() > 0
            return rng.choice(_NAMES) if capitalised_inside or word.lower() in self.names else word

        swapped = _WORD.sub(swap, sentence)
        return _NUMBER.sub(lambda m: str(rng.randint(2, 99) * 10 ** (len(m.group(0)) // 3)), swapped)


# Stand-ins for the names and numbers in generated sentences, so that a distractor reads like news about
# the same kind of events without restating a fact of the source articles.
_NAMES = """Oslo Vienna Geneva Ankara Doha Nairobi Lisbon Warsaw Tallinn Quito Hanoi Lagos Dakar Tbilisi
Yerevan Baku Astana Tirana Skopje Sofia Riga Vilnius Dublin Helsinki Reykjavik Valletta Amman Muscat Kigali
Accra Lima Bogota Santiago Manila Jakarta Colombo Dhaka Tunis Rabat Algiers Harare Lusaka Windhoek Maputo
Moreau Lindqvist Okafor Haddad Novak Petersen Alvarez Kowalski Tanaka Nakamura Rossi Bianchi Jansen Ivanova
Mbeki Castillo Ferreira Olsen Varga Horvat Kaya Demir Sato Mendes Costa Berg Larsen Keller Weber""".split()
# Words, acronyms (NATO, U.S.) and possessive or hyphenated forms.
_WORD = re.compile(r"\b[A-Za-z](?:[A-Za-z]+|(?:\.[A-Z])+\.?)?(?:[’'-][A-Za-z]+)?")
_NUMBER = re.compile(r"\d[\d,.]*\d|\d")


def write_distractor_corpus(source_dir: Path, target_dir: Path, count: int, seed: int = 29) -> list[Path]:
    """``count`` news-like articles written by a trigram model of the source articles (see MarkovWriter),
    with names and numbers swapped for stand-ins."""
    writer = MarkovWriter(source_sentences(source_dir))
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        title = " ".join(writer.sentence(rng, 10).split()[:9]).rstrip(".,;:")
        paragraphs = [
            " ".join(writer.sentence(rng) for _ in range(rng.randint(3, 7)))
            for _ in range(rng.randint(5, 10))
        ]
        path = target_dir / f"synthetic-{seed}-{i:05d}.txt"
        path.write_text(f"{title}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
        written.append(path)
    return written
