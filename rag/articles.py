"""Stage 1: read article files (.txt, .md, .html), decode them, clean away web boilerplate, find metadata.

The cleaned text returned here is the canonical article text: chunks, passages and citations all carry
offsets into it, so it is computed once, deterministically, and stored with the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rag.errors import ArticleError
from rag.settings import Settings
from rag.types import Article, SkippedFile

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})
_RULES_FILE = Path(__file__).with_name("cleaning_rules.toml")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*\r?\n", re.DOTALL)
_FRONT_MATTER_KEYS = ("title", "outlet", "date")
_TITLE_MAX_CHARS: int = Settings.model_fields["max_title_chars"].default  # callers without settings


@dataclass(frozen=True)
class CleaningRules:
    drop_lines: tuple[re.Pattern[str], ...]
    substitutions: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def from_toml(cls, path: Path) -> CleaningRules:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return cls(
            drop_lines=tuple(re.compile(p, re.IGNORECASE) for p in data.get("drop_lines", [])),
            substitutions=tuple(
                (re.compile(p, re.IGNORECASE), repl) for p, repl in data.get("substitutions", [])
            ),
        )


@lru_cache(maxsize=1)
def default_rules() -> CleaningRules:
    return CleaningRules.from_toml(_RULES_FILE)


def clean_text(raw: str, rules: CleaningRules | None = None) -> str:
    """Drop boilerplate lines and spans, normalise whitespace; idempotent."""
    rules = rules or default_rules()
    text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    kept: list[str] = []
    for line in text.split("\n"):
        for pattern, replacement in rules.substitutions:
            line = pattern.sub(replacement, line)
        line = re.sub(r"[ \t]+", " ", line).strip()
        if line and any(p.fullmatch(line) for p in rules.drop_lines):
            continue
        kept.append(line)
    cleaned = "\n".join(kept)
    return re.sub(r"\n{3,}", "\n\n", cleaned).strip()


def decode_bytes(data: bytes) -> str:
    """Decode what can honestly be decoded; refuse binary data rather than index garbage."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="strict")
    sample = data[:8192]
    if b"\x00" in sample or _control_ratio(sample) > 0.05:
        raise ArticleError("binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Not UTF-8: legacy Western encodings are by far the most common case for news text.
        return data.decode("cp1252", errors="strict") if _is_cp1252(data) else data.decode("latin-1")


def _control_ratio(sample: bytes) -> float:
    if not sample:
        return 0.0
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls / len(sample)


def _is_cp1252(data: bytes) -> bool:
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return True


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """Optional ``---`` block of ``key: value`` lines at the top of a text or Markdown file."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in _FRONT_MATTER_KEYS and value.strip():
            meta[key.strip().lower()] = value.strip()
    return meta, text[match.end() :]


def html_to_text(html: str) -> tuple[dict[str, str], str]:
    """Visible article text and metadata of an HTML page; scripts, styles and page chrome are dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    meta: dict[str, str] = {}
    for key, selectors in {
        "title": ['meta[property="og:title"]', "h1", "title"],
        "outlet": ['meta[property="og:site_name"]'],
        "date": ['meta[property="article:published_time"]', "time[datetime]", 'meta[name="date"]'],
    }.items():
        for selector in selectors:
            node = soup.select_one(selector)
            if node is None:
                continue
            value = node.get("content") or node.get("datetime") or node.get_text(" ", strip=True)
            if isinstance(value, str) and value.strip():
                meta[key] = value.strip()
                break
    for tag in soup(
        [
            "script",
            "style",
            "noscript",
            "template",
            "iframe",
            "svg",
            "form",
            "nav",
            "header",
            "footer",
            "aside",
            "button",
        ]
    ):
        tag.decompose()
    root = soup.find("article") or soup.body or soup
    return meta, root.get_text("\n")


def article_id_for(path: Path) -> str:
    """A readable, stable id from the file name (``Serbia talks.txt`` -> ``serbia-talks``)."""
    slug = re.sub(r"[^a-z0-9_]+", "-", path.stem.lower()).strip("-")
    return slug or hashlib.sha1(str(path).encode()).hexdigest()[:12]


def guess_title(text: str, max_chars: int = _TITLE_MAX_CHARS) -> str:
    """The first line when it reads like a headline, else the start of the first sentence."""
    first_line = next((line.strip() for line in text.split("\n") if line.strip()), "")
    return shorten_title(first_line.rstrip(".").strip(), max_chars)


def shorten_title(title: str, max_chars: int = _TITLE_MAX_CHARS) -> str:
    """At most ``max_chars`` characters, cut at a word boundary with "…": every source of a title
    (front matter, og:title, <h1>, <title>, the first line) goes through here."""
    title = " ".join(title.split())
    if len(title) <= max_chars:
        return title
    cut = title[: max_chars - 1]
    if " " in cut[max_chars // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-–—") + "…"


def content_hash(title: str, text: str, outlet: str | None, date: str | None) -> str:
    payload = json.dumps([title, text, outlet, date], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def parse_article(
    raw: str, *, suffix: str, article_id: str, source: str, max_title_chars: int = _TITLE_MAX_CHARS
) -> Article:
    """Build an Article from decoded file content; raises ArticleError when nothing is left."""
    if suffix in (".html", ".htm"):
        meta, body = html_to_text(raw)
    else:
        meta, body = split_front_matter(raw)
    text = clean_text(body)
    if not text:
        raise ArticleError("no article text after cleaning (empty file?)")
    title = shorten_title(clean_text(meta.get("title", "")), max_title_chars) or guess_title(
        text, max_title_chars
    )
    outlet, date = meta.get("outlet"), meta.get("date")
    return Article(
        id=article_id,
        title=title,
        text=text,
        source=source,
        outlet=outlet,
        date=date,
        content_hash=content_hash(title, text, outlet, date),
    )


def load_article(
    path: Path,
    *,
    max_bytes: int,
    article_id: str | None = None,
    suffix: str | None = None,
    max_title_chars: int = _TITLE_MAX_CHARS,
) -> Article:
    """Read one file into a cleaned Article, or raise ArticleError with a reason a user can act on.

    ``suffix`` overrides the file's own (an upload's temporary file may not carry the user's name).
    """
    suffix = (suffix or path.suffix).lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ArticleError(f"unsupported file type '{suffix or path.name}' (use .txt, .md or .html)")
    size = path.stat().st_size
    if size > max_bytes:
        raise ArticleError(f"file is {size:,} bytes, over the {max_bytes:,}-byte limit (RAG_MAX_FILE_BYTES)")
    raw = decode_bytes(path.read_bytes())
    return parse_article(
        raw,
        suffix=suffix,
        article_id=article_id or article_id_for(path),
        source=str(path.resolve()),
        max_title_chars=max_title_chars,
    ).model_copy(update={"stamp": file_stamp(path)})


def walk_files(folder: Path) -> Iterator[tuple[str, str, str | None]]:
    """(path as found under ``folder``, source, stamp) for every file below it, hidden files and folders
    left out, in a stable order. The source is the file's absolute, link-free path (how the index names
    it); the stamp is None when the file cannot be read.

    One ``os.walk`` and one stat per file, with no ``Path`` objects: through ``Path.rglob`` and
    ``Path.resolve`` the same listing of 30,000 files took 9.4 s here, 0.8 s this way (both on this
    2-core machine under load). It runs at every start and every ingest.
    """
    given, root = str(folder), str(folder.resolve())
    for current, subfolders, names in os.walk(given):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = current[len(given) :].lstrip(os.sep)
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(current, name)
            source = os.path.join(root, relative, name)
            try:
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    source, info = os.path.realpath(path), os.stat(path)
                yield path, source, _stamp(info)
            except OSError:
                yield path, source, None


@lru_cache(maxsize=1)
def _rules_digest() -> str:
    return hashlib.sha1(_RULES_FILE.read_bytes()).hexdigest()[:8]


def file_stamp(path: Path) -> str:
    """Size, modification time and cleaning-rules version: when all three match the indexed ones, the
    file need not be read again (reading and cleaning thousands of files is most of a re-ingest)."""
    return _stamp(path.stat())


def _stamp(info: os.stat_result) -> str:
    return f"{info.st_size}:{info.st_mtime_ns}:{_rules_digest()}"


def folder_stamps(folder: Path) -> dict[str, str]:
    """Source -> stamp of every file an ingest of ``folder`` would index: what a start compares with the
    index to find new, changed and deleted files."""
    if not folder.is_dir():
        return {}
    inside = str(folder.resolve()) + os.sep
    return {source: stamp for _, source, stamp in walk_files(folder) if stamp and source.startswith(inside)}


@dataclass
class Scan:
    articles: list[Article]
    skipped: list[SkippedFile]
    unchanged: list[str]  # sources whose stamp matched the one given: not read


def scan_articles(
    paths: Iterable[Path],
    *,
    max_bytes: int,
    known: dict[str, str] | None = None,
    max_title_chars: int = _TITLE_MAX_CHARS,
) -> Scan:
    """Load every file it can, except those whose stamp matches ``known`` (source -> stamp); the rest
    are reported with a reason, never silently dropped."""
    scan = Scan([], [], [])
    known = known or {}
    for target in paths:
        if target.is_dir():
            _scan_folder(target, scan, known, max_bytes, max_title_chars)
        elif target.exists():  # named explicitly: followed even if it is a link
            _scan_file(
                target, str(target.resolve()), file_stamp(target), scan, known, max_bytes, max_title_chars
            )
    return scan


def _scan_folder(
    folder: Path, scan: Scan, known: dict[str, str], max_bytes: int, max_title_chars: int
) -> None:
    inside = str(folder.resolve()) + os.sep
    for path, source, stamp in walk_files(folder):
        if not source.startswith(inside):
            reason = f"symbolic link to {source}, outside {folder}: not followed"
            scan.skipped.append(SkippedFile(path=path, reason=reason))
            continue
        _scan_file(path, source, stamp, scan, known, max_bytes, max_title_chars)


def _scan_file(
    path: Path | str,
    source: str,
    stamp: str | None,
    scan: Scan,
    known: dict[str, str],
    max_bytes: int,
    max_title_chars: int,
) -> None:
    """Unchanged since the stamp the index has (not read again), or loaded, or skipped with the reason."""
    if stamp is not None and known.get(source) == stamp:
        scan.unchanged.append(source)
        return
    try:
        scan.articles.append(load_article(Path(path), max_bytes=max_bytes, max_title_chars=max_title_chars))
    except (ArticleError, UnicodeDecodeError, OSError) as exc:
        scan.skipped.append(SkippedFile(path=str(path), reason=str(exc)))


def load_articles(paths: Iterable[Path], *, max_bytes: int) -> tuple[list[Article], list[SkippedFile]]:
    """Every article under the paths, and the files refused with their reasons."""
    scan = scan_articles(paths, max_bytes=max_bytes)
    return scan.articles, scan.skipped
