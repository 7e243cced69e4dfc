from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.articles import CleaningRules, clean_text, decode_bytes, load_article, load_articles
from rag.errors import ArticleError
from tests.conftest import CORPUS

BOILERPLATE = [
    r"Find out more about",
    r"Home\s*»",
    r"Leave a (Comment|Reply)",
    r"Akismet",
    r"Be the first to comment",
    r"Share your (thoughts|perspectives)",
    r"in the comments below",
    r"\*\*",
]


@pytest.fixture(scope="module")
def seeds():
    articles, skipped = load_articles([CORPUS], max_bytes=10_000_000)
    assert not skipped
    return articles


def test_every_shipped_article_loads_with_a_title(seeds) -> None:
    assert len(seeds) == 5
    for article in seeds:
        assert article.title and len(article.title) < 200
        assert len(article.text) > 3000


@pytest.mark.parametrize("pattern", BOILERPLATE)
def test_boilerplate_is_gone_from_every_article(seeds, pattern: str) -> None:
    for article in seeds:
        assert not re.search(pattern, article.text, re.IGNORECASE), (article.id, pattern)


def test_cleaning_keeps_the_sentence_an_seo_line_was_glued_to(seeds) -> None:
    serbia = next(a for a in seeds if a.id.startswith("000"))
    assert "Demand clarity on the agenda.\n" in serbia.text
    assert "The Role of Non-State Actors and Civil Society in Supporting the Process." in serbia.text


def test_front_matter_gives_metadata_and_is_not_article_text(seeds) -> None:
    by_outlet = {a.outlet for a in seeds}
    assert "RayHaber" in by_outlet
    assert all(not a.text.startswith("---") and "title:" not in a.text[:200] for a in seeds)


def test_cleaning_is_idempotent(seeds) -> None:
    for article in seeds:
        assert clean_text(article.text) == article.text


def test_rules_are_data_that_can_be_extended(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(r"""drop_lines = ['sponsored by .*']
substitutions = [['\(AP\)\s*', '']]
""")
    rules = CleaningRules.from_toml(rules_file)
    assert clean_text("Sponsored by Acme\nKYIV (AP) Talks resumed.", rules) == "KYIV Talks resumed."


def test_title_is_guessed_from_a_headline_line(tmp_path: Path) -> None:
    path = tmp_path / "story.txt"
    path.write_text("Talks Resume in Geneva\n\nDelegates met on Monday. They agreed to meet again.")
    article = load_article(path, max_bytes=10_000)
    assert article.title == "Talks Resume in Geneva"
    assert article.id == "story"


def test_html_is_reduced_to_its_article_text(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Page</title><meta property='og:site_name' content='Daily Planet'>"
        "<style>p{color:red}</style><script>alert('x')</script></head><body><nav>Home » World</nav>"
        "<article><h1>Summit in Oslo</h1><p>Leaders met in Oslo on Friday.</p></article>"
        "<footer>Leave a Reply</footer></body></html>"
    )
    article = load_article(path, max_bytes=10_000)
    assert article.title == "Summit in Oslo"
    assert article.outlet == "Daily Planet"
    assert "Leaders met in Oslo on Friday." in article.text
    assert "alert" not in article.text and "color" not in article.text and "Home" not in article.text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("Café in Zürich — naïve".encode("cp1252"), "Café in Zürich — naïve"),
        ("Café in Zürich".encode("latin-1"), "Café in Zürich"),
        ("Київ і Мінськ".encode("utf-16"), "Київ і Мінськ"),
        ("\ufeffplain".encode(), "plain"),
    ],
)
def test_legacy_encodings_are_decoded(data: bytes, expected: str) -> None:
    assert decode_bytes(data) == expected


def test_binary_and_empty_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    png = tmp_path / "image.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    other = tmp_path / "notes.pdf"
    other.write_bytes(b"%PDF-1.4")
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    good = tmp_path / "good.txt"
    good.write_text("A real article about talks in Vienna.")
    articles, skipped = load_articles([tmp_path], max_bytes=2000)
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert [a.id for a in articles] == ["good"]
    assert "binary" in reasons["image.txt"]
    assert "no article text" in reasons["empty.txt"]
    assert "unsupported" in reasons["notes.pdf"]
    assert "limit" in reasons["big.txt"]
    with pytest.raises(ArticleError):
        load_article(png, max_bytes=10_000)


def test_every_title_source_has_one_length_limit(tmp_path: Path) -> None:
    from rag.settings import Settings

    limit = Settings.model_fields["max_title_chars"].default
    long_title = "Harbour " * 200_000  # 1.6 MB
    sources = {
        "front.md": f"---\ntitle: {long_title}\n---\nThe harbour reopened on Monday.",
        "og.html": f"<html><head><meta property='og:title' content='{long_title}'></head>"
        "<body><p>The harbour reopened on Monday.</p></body></html>",
        "h1.html": f"<html><body><h1>{long_title}</h1><p>The harbour reopened on Monday.</p></body></html>",
        "title.html": f"<html><head><title>{long_title}</title></head><body><p>Reopened.</p></body></html>",
        "line.txt": f"{long_title}\n\nThe harbour reopened on Monday.",
    }
    for name, content in sources.items():
        (tmp_path / name).write_text(content)
        article = load_article(tmp_path / name, max_bytes=10_000_000)
        assert len(article.title) <= limit, name
        assert article.title.startswith("Harbour Harbour") and article.title.endswith("…"), name
        shorter = load_article(tmp_path / name, max_bytes=10_000_000, max_title_chars=40)
        assert len(shorter.title) <= 40, name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Officials said 5 * 3 = 15 delegations would attend.", None),
        ("The ratio was 2 * x, not x * 2.", None),
        ("* A bullet that starts its line\n* And another", None),
        (
            "Track-two diplomacy: * **Societal Bridges:** events for civil society.",
            "Track-two diplomacy:\n* Societal Bridges: events for civil society.",
        ),
    ],
)
def test_bullets_are_a_line_start_pattern_and_arithmetic_survives(raw: str, expected: str | None) -> None:
    assert clean_text(raw) == (expected or raw)
