"""Stage 2: split cleaned articles into sentences and sentence-aligned, overlapping chunks.

Everything here works on character offsets into the canonical text, never on copies, so that
``chunk.text == article.text[chunk.start:chunk.end]`` holds by construction (and is asserted).
We split sentences ourselves instead of letting a text splitter re-find chunks with ``str.find``:
scraped articles repeat whole paragraphs, and a re-found offset can point at the wrong copy.
LangChain's recursive splitter still handles the rare sentence too long for one chunk.
"""

from __future__ import annotations

import re

from rag.types import Article, Chunk, Span

# Words that end with a full stop without ending a sentence.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof st sen rep gov gen col lt sgt capt jr sr vs etc inc ltd co corp no nos approx est
    dept univ jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e a.m p.m u.s u.k u.n
    """.split()
)  # A candidate boundary: terminal punctuation and closing quotes/brackets, then space or a glued capital.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|[A-Z“\"‘]|$)")
_WORD_BEFORE = re.compile(r"([\w.]+)$")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans of ``text[start:end]`` with surrounding whitespace excluded.

    Line breaks always end a sentence (headlines, list items); otherwise a sentence ends at terminal
    punctuation unless the word before it is an abbreviation or an initial ("U.S.", "Dr.").
    """
    end = len(text) if end is None else end
    spans: list[Span] = []
    line_start = start
    for line_end in _line_ends(text, start, end):
        spans.extend(_sentences_in_line(text, line_start, line_end))
        line_start = line_end + 1
    return spans


def _line_ends(text: str, start: int, end: int) -> list[int]:
    ends = [m.start() for m in re.finditer(r"\n", text[start:end])]
    return [start + e for e in ends] + [end]


def _sentences_in_line(text: str, start: int, end: int) -> list[Span]:
    spans: list[Span] = []
    cursor = start
    for match in _BOUNDARY.finditer(text, start, end):
        boundary = match.end()
        if _is_abbreviation(text, cursor, match.start()):
            continue
        glued = boundary < end and not text[boundary].isspace()
        if glued and not _glued_boundary_ok(text, cursor, match.start()):
            continue
        spans.extend(_trimmed(text, cursor, boundary))
        cursor = boundary
    spans.extend(_trimmed(text, cursor, end))
    return spans


def _is_abbreviation(text: str, sentence_start: int, dot: int) -> bool:
    if text[dot] != ".":
        return False
    word = _WORD_BEFORE.search(text, sentence_start, dot)
    if not word:
        return False
    token = word.group(1).lower().strip(".")
    return token in _ABBREVIATIONS or len(token.replace(".", "")) == 1


def _glued_boundary_ok(text: str, sentence_start: int, dot: int) -> bool:
    """'conflict.Minsk' is two sentences glued by a scraper; 'U.S' or 'No.5' are not."""
    word = _WORD_BEFORE.search(text, sentence_start, dot)
    return word is not None and len(word.group(1)) >= 3 and word.group(1).isalpha()


def _trimmed(text: str, start: int, end: int) -> list[Span]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [Span(start, end)] if end > start else []


def _split_long_sentence(text: str, span: Span, chunk_size: int) -> list[Span]:
    """Cut a sentence longer than a chunk at clause or word boundaries (LangChain's recursive splitter)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=0, separators=["; ", ", ", " ", ""], keep_separator="end"
    )
    pieces: list[Span] = []
    cursor = span.start
    for piece in splitter.split_text(text[span.start : span.end]):
        found = text.find(piece, cursor, span.end)
        if found < 0:  # the splitter stripped something unexpected: fall back to the whole sentence
            return [span]
        pieces.append(Span(found, found + len(piece)))
        cursor = found + len(piece)
    return pieces


def chunk_spans(text: str, chunk_size: int, overlap_sentences: int) -> list[Span]:
    """Pack consecutive sentences into chunks of about ``chunk_size`` characters.

    A chunk never ends mid-sentence (unless the sentence alone is too long), prefers to end at a
    paragraph break once it is half full, and repeats the last ``overlap_sentences`` sentences of the
    previous chunk so that a claim straddling a boundary is whole somewhere.
    """
    sentences: list[Span] = []
    for span in sentence_spans(text):
        if span.end - span.start > chunk_size:
            sentences.extend(_split_long_sentence(text, span, chunk_size))
        else:
            sentences.append(span)
    chunks: list[Span] = []
    first = 0
    while first < len(sentences):
        last = first
        while last + 1 < len(sentences):
            nxt = sentences[last + 1]
            length = nxt.end - sentences[first].start
            if length > chunk_size:
                break
            half_full = sentences[last].end - sentences[first].start >= chunk_size // 2
            if half_full and "\n\n" in text[sentences[last].end : nxt.start]:
                break
            last += 1
        chunks.append(Span(sentences[first].start, sentences[last].end))
        if last + 1 >= len(sentences):
            break
        first = max(last + 1 - overlap_sentences, first + 1)
    return chunks


def chunk_article(article: Article, chunk_size: int, overlap_sentences: int) -> list[Chunk]:
    chunks = [
        Chunk(article_id=article.id, index=i, start=s.start, end=s.end, text=article.text[s.start : s.end])
        for i, s in enumerate(chunk_spans(article.text, chunk_size, overlap_sentences))
    ]
    assert all(c.text == article.text[c.start : c.end] for c in chunks)
    return chunks
