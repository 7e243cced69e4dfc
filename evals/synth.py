"""Deterministic synthetic corpora for benchmarks and fault tests, written from real article text.

With no network there is no archive to download; a word-trigram model of real news articles writes
documents with realistic length, vocabulary and sentence structure. A fixed seed makes every corpus
reproducible. The real articles are not included: callers copy them in when they need them.
"""

from __future__ import annotations

import random
import re
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
    which no real archive does and which buries the one article that truly answers; generated sentences
    share the vocabulary and rhythm of news prose without restating its facts.
    """

    def __init__(self, sentences: list[str]) -> None:
        self.source = set(sentences)
        self.starts: list[tuple[str, str]] = []
        self.next: dict[tuple[str, str], list[str]] = {}
        for sentence in sentences:
            words = sentence.split()
            if len(words) < 3:
                continue
            self.starts.append((words[0], words[1]))
            for a, b, c in zip(words, words[1:], [*words[2:], "\0"], strict=False):
                self.next.setdefault((a, b), []).append(c)

    def sentence(self, rng: random.Random, max_words: int = 45) -> str:
        a, b = rng.choice(self.starts)
        words = [a, b]
        while len(words) < max_words:
            c = rng.choice(self.next.get((a, b), ["\0"]))
            if c == "\0":
                break
            words.append(c)
            a, b = b, c
        text = " ".join(words)
        text = text if text[-1] in '.!?”"' else text + "."
        if text in self.source:  # a verbatim source sentence: write another
            return self.sentence(rng, max_words)
        return _disguise(text, rng)


# Stand-ins for the names and numbers in generated sentences, so that a distractor reads like news about
# the same kind of events without restating a fact of the source articles.
_NAMES = """Oslo Vienna Geneva Ankara Doha Nairobi Lisbon Warsaw Tallinn Quito Hanoi Lagos Dakar Tbilisi
Yerevan Baku Astana Tirana Skopje Sofia Riga Vilnius Dublin Helsinki Reykjavik Valletta Amman Muscat Kigali
Accra Lima Bogota Santiago Manila Jakarta Colombo Dhaka Tunis Rabat Algiers Harare Lusaka Windhoek Maputo
Moreau Lindqvist Okafor Haddad Novak Petersen Alvarez Kowalski Tanaka Nakamura Rossi Bianchi Jansen Ivanova
Mbeki Castillo Ferreira Olsen Varga Horvat Kaya Demir Sato Mendes Costa Berg Larsen Keller Weber""".split()
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+(?:[’'-][A-Za-z]+)?")
_NUMBER = re.compile(r"\d[\d,.]*\d|\d")


def _disguise(sentence: str, rng: random.Random) -> str:
    first, _, rest = sentence.partition(" ")
    rest = _CAPITALISED.sub(lambda _: rng.choice(_NAMES), rest)
    return _NUMBER.sub(lambda m: str(rng.randint(2, 99) * 10 ** (len(m.group(0)) // 3)), f"{first} {rest}")


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
            " ".join(writer.sentence(rng) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(4, 9))
        ]
        path = target_dir / f"synthetic-{seed}-{i:05d}.txt"
        path.write_text(f"{title}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
        written.append(path)
    return written
