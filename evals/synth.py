"""Deterministic synthetic corpora for benchmarks and fault tests, recombined from real article text.

With no network there is no archive to download; recombining sentences of real news articles gives
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


def write_synthetic_corpus(source_dir: Path, target_dir: Path, count: int, seed: int = 13) -> list[Path]:
    """Write ``count`` articles of 4 to 9 paragraphs of 2 to 5 sentences each to ``target_dir``."""
    sentences = source_sentences(source_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        title = " ".join(rng.choice(sentences).split()[:8]).rstrip(".,;:")
        paragraphs = [" ".join(rng.sample(sentences, rng.randint(2, 5))) for _ in range(rng.randint(4, 9))]
        path = target_dir / f"synthetic-{seed}-{i:05d}.txt"
        path.write_text(f"{title}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
        written.append(path)
    return written


# Stand-ins for the names and numbers of the source sentences, so that a distractor reads like news
# about the same kind of events without repeating any fact of the real articles.
_NAMES = """Oslo Vienna Geneva Ankara Doha Nairobi Lisbon Warsaw Tallinn Quito Hanoi Lagos Dakar Tbilisi
Yerevan Baku Astana Tirana Skopje Sofia Riga Vilnius Dublin Helsinki Reykjavik Valletta Amman Muscat Kigali
Accra Lima Bogota Santiago Manila Jakarta Colombo Dhaka Tunis Rabat Algiers Harare Lusaka Windhoek Maputo
Moreau Lindqvist Okafor Haddad Novak Petersen Alvarez Kowalski Tanaka Nakamura Rossi Bianchi Jansen Ivanova
Mbeki Castillo Ferreira Olsen Varga Horvat Kaya Demir Sato Mendes Costa Berg Larsen Keller Weber""".split()
_CAPITALISED = re.compile(r"(?<=[a-z,;:]\s)[A-Z][a-z]+(?:[’'-][A-Za-z]+)?")
_NUMBER = re.compile(r"\d[\d,.]*")


def _disguise(sentence: str, rng: random.Random) -> str:
    sentence = _CAPITALISED.sub(lambda _: rng.choice(_NAMES), sentence)
    return _NUMBER.sub(lambda m: str(rng.randint(2, 99) * (10 ** (len(m.group(0)) // 3))), sentence)


def write_distractor_corpus(source_dir: Path, target_dir: Path, count: int, seed: int = 29) -> list[Path]:
    """Like write_synthetic_corpus, but names (after a sentence's first word) and numbers are swapped
    for stand-ins, so no distractor states a fact of the source articles."""
    sentences = source_sentences(source_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        title = _disguise(" ".join(rng.choice(sentences).split()[:8]).rstrip(".,;:"), rng)
        paragraphs = [
            " ".join(_disguise(s, rng) for s in rng.sample(sentences, rng.randint(2, 5)))
            for _ in range(rng.randint(4, 9))
        ]
        path = target_dir / f"synthetic-{seed}-{i:05d}.txt"
        path.write_text(f"{title}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
        written.append(path)
    return written
