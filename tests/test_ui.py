"""The web chat in a real browser (Debian's Chromium driven by Playwright) against a real ``rag serve``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evals.serving import running_app
from rag.pipeline import Pipeline
from tests.conftest import CORPUS, ROOT, make_settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NEW_ARTICLE = (
    "Oslo offers a venue for the next round\n\n"
    "Norway's foreign ministry said on Tuesday that Oslo is ready to host the next round of talks. "
    "The ministry said the Holmenkollen conference centre could welcome forty delegates at short notice.\n"
)
SCRIPT_ARTICLE = (
    "A note about a summit in Reykjavik\n\n"
    "The organisers of the Reykjavik summit published a note that read <script>window.ragPwned = 1</script> "
    "in its first line, which the harbour authority later removed.\n"
)

if not CHROMIUM.exists() and os.environ.get("CI"):
    pytest.fail("Chromium is missing in CI: `make test` installs it with apt-get", pytrace=False)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)"
)


@pytest.fixture(scope="module")
def app_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ui")
    shutil.copytree(CORPUS, tmp / "corpus")
    return tmp / "corpus", tmp / "index"


@pytest.fixture(scope="module")
def app_url(app_dirs: tuple[Path, Path]) -> Iterator[str]:
    with running_app(*app_dirs) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, app_url: str) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.requests_seen = []
    page.on("request", lambda request: page.requests_seen.append(request.url))
    page.goto(app_url)
    page.wait_for_selector("#question textarea")
    yield page
    page.close()


def ask(page: Any, question: str) -> None:
    before = page.locator("#chat .message").count()
    page.fill("#question textarea", question)
    page.click("#ask")
    page.wait_for_function(
        "n => document.querySelectorAll('#chat .message').length >= n + 2 && "
        "!document.querySelector('#chat .pending')",
        arg=before,
        timeout=60_000,
    )
    page.wait_for_timeout(500)  # the last streamed chunk replaces the partial answer


def upload(page: Any, tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    page.get_by_role("tab", name="Library").click()
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_timeout(1000)
    page.click("#add-articles")
    page.wait_for_function(
        "() => (document.querySelector('#upload-status')?.innerText || '').match(/Indexed|❌|Already/)",
        timeout=120_000,
    )
    status: str = page.inner_text("#upload-status")
    page.get_by_role("tab", name="Chat").click()
    return status


def test_answer_with_citation_chip_opens_the_highlighted_source(page: Any) -> None:
    ask(page, "How far is the Belarusian border from Kyiv?")
    answer = page.locator("#chat .message").last
    assert "200 kilometres" in answer.inner_text()
    chip = answer.locator(".cite-chip").first
    chip.click()
    page.wait_for_selector("#sources mark", timeout=30_000)
    assert "200 kilometres" in page.inner_text("#sources mark")
    assert "Belarus Steps Up" in page.inner_text("#sources h3")
    assert page.locator("#sources mark").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-answered.png"), full_page=True)
    offsite = [
        url for url in page.requests_seen if not url.startswith(("http://127.0.0.1", "data:", "blob:"))
    ]
    assert offsite == [], offsite


def test_not_found_answers_look_different_and_say_what_was_searched(page: Any) -> None:
    ask(page, "What is a good recipe for banana bread?")
    answer = page.locator("#chat .message").last
    assert answer.locator(".not-found").count() == 1
    assert "Searched the closest passages in" in answer.inner_text()
    assert answer.locator(".cite-chip").count() == 0


def test_follow_up_and_new_conversation(page: Any) -> None:
    ask(page, "Who is Serbia's foreign minister?")
    ask(page, "What did he say about the protesters?")
    follow_up = page.locator("#chat .message").last.inner_text()
    assert "protest" in follow_up  # answered about the protests…
    assert "Serbia’s Foreign Minister offers" in follow_up  # …from the article the first turn was about
    page.click("#new-conversation")
    page.wait_for_function("() => document.querySelectorAll('#chat .message').length === 0")


def test_uploaded_article_is_answerable_and_kept(
    page: Any, tmp_path: Path, app_dirs: tuple[Path, Path]
) -> None:
    status = upload(page, tmp_path, "oslo-venue.txt", NEW_ARTICLE.encode())
    assert "Indexed 1 article" in status
    ask(page, "How many delegates could the Holmenkollen conference centre welcome?")
    answer = page.locator("#chat .message").last.inner_text()
    assert "forty delegates" in answer
    corpus, index = app_dirs
    assert (corpus / "oslo-venue.txt").exists()
    assert index == corpus.parent / "index"
    reopened = Pipeline(make_settings(corpus.parent))
    assert "oslo-venue" in reopened.index.articles  # persisted: a restart serves it


def test_bad_uploads_are_refused_with_a_reason(page: Any, tmp_path: Path) -> None:
    status = upload(page, tmp_path, "picture.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(200)))
    assert "picture.txt" in status and "binary" in status


def test_article_markup_is_shown_as_text(page: Any, tmp_path: Path) -> None:
    status = upload(page, tmp_path, "reykjavik-note.txt", SCRIPT_ARTICLE.encode())
    assert "Indexed 1 article" in status
    ask(page, "What did the note of the Reykjavik summit organisers read?")
    answer = page.locator("#chat .message").last
    assert "<script>window.ragPwned = 1</script>" in answer.inner_text()
    answer.locator(".cite-chip").first.click()
    page.wait_for_selector("#sources mark")
    assert "<script>" in page.inner_text("#sources")
    assert page.evaluate("() => window.ragPwned") is None


@pytest.fixture(scope="module")
def llm_app(app_dirs: tuple[Path, Path]) -> Iterator[tuple[str, Any]]:
    """The web chat answering through an OpenAI-compatible server (scripted replies, streamed slowly)."""
    from tests.llm_server import scripted_llm
    from tests.test_generate import cite_fact

    corpus, _ = app_dirs
    with (
        scripted_llm(cite_fact, token_delay_s=0.15) as llm,
        running_app(
            corpus,
            corpus.parent / "llm-index",
            RAG_GENERATOR="openai",
            RAG_LLM_BASE_URL=f"{llm.url}/v1",
            RAG_LLM_MODEL="scripted",
            RAG_LLM_TIMEOUT_S="5",
        ) as url,
    ):
        yield url, llm


def last_answer_when_final(page: Any) -> Any:
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('#chat .message')].pop();"
        " return m && m.querySelector('.refs, .not-found, .notice'); }",
        timeout=60_000,
    )
    return page.locator("#chat .message").last


def test_llm_answer_streams_into_the_chat_then_gets_checked_citations(browser: Any, llm_app: tuple[str, Any]):
    url, _ = llm_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#question textarea")
    page.fill("#question textarea", "How far is the Belarusian border from Kyiv?")
    page.click("#ask")
    # Part of the reply is on screen while the model is still writing: no citation chip yet.
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('#chat .message')].pop();"
        " return m && m.innerText.includes('Belarusian frontier') && !m.innerText.includes('Kyiv')"
        " && !m.querySelector('.cite-chip'); }",
        timeout=60_000,
    )
    answer = last_answer_when_final(page)
    assert "only 200 kilometres from Kyiv" in answer.inner_text()
    answer.locator(".cite-chip").first.click()
    page.wait_for_selector("#sources mark", timeout=30_000)
    assert "200 kilometres" in page.inner_text("#sources mark")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-llm-answered.png"), full_page=True)
    page.close()


def test_a_slow_llm_gets_a_clear_message_and_the_extractive_answer(browser: Any, llm_app: tuple[str, Any]):
    url, llm = llm_app
    llm.first_byte_delay_s = 30
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#question textarea")
        page.fill("#question textarea", "How far is the Belarusian border from Kyiv?")
        page.click("#ask")
        answer = last_answer_when_final(page)
        text = answer.inner_text()
        assert "did not answer within 5 s" in answer.locator(".notice").inner_text()
        assert "200 kilometres" in text and answer.locator(".cite-chip").count() >= 1
        page.close()
    finally:
        llm.first_byte_delay_s = 0


MARKUP_TITLE = 'Tom\'s "Q&A" *on* _the_ [harbour] `dues` #3 | ~x~ <b>no</b> & $5 $$x^2$$'
MARKUP_BODY = (
    'The Narvik harbour office wrote that Tom\'s "Q&A" *on* _the_ [harbour] `dues` #3 | ~tilde~ '
    "<i>stays</i> & costs $5, or $$x^2$$ in the tariff formula."
)


def test_article_text_is_shown_exactly_as_written(page: Any, tmp_path: Path) -> None:
    """Quotes, Markdown and math characters in an article's title and text: the answer, its reference,
    the Sources panel and the passages show them character for character (innerText)."""
    status = upload(page, tmp_path, "narvik-tariff.txt", f"{MARKUP_TITLE}\n\n{MARKUP_BODY}\n".encode())
    assert "Indexed 1 article" in status and "narvik-tariff" in status
    page.get_by_role("tab", name="Library").click()
    # The library lists the title as written. The table renders only the rows in view, and this title
    # sorts last among the module's uploads: scroll each scrollable part of it to the end, then look.
    page.wait_for_function(
        """title => {
            const table = document.querySelector('#library');
            for (const el of table.querySelectorAll('*')) {
                if (el.scrollHeight > el.clientHeight) el.scrollTop = el.scrollHeight;
            }
            return table.innerText.includes(title);
        }""",
        arg=MARKUP_TITLE,
        timeout=15_000,
    )
    page.get_by_role("tab", name="Chat").click()
    question = "1. What did the Narvik harbour office write about the tariff formula $$x^2$$?"  # not a list
    ask(page, question)
    assert page.locator("#chat .message.user").last.inner_text().strip() == question  # the question bubble
    answer = page.locator("#chat .message").last
    shown = answer.inner_text()
    assert MARKUP_BODY in shown, shown
    assert answer.locator(".refs").inner_text().strip() == f"[1] {MARKUP_TITLE}: “{MARKUP_BODY}”"
    assert page.locator(".katex, math, ol").count() == 0  # no math, and the question is no list
    page.get_by_text("Retrieved passages (with scores)").click()
    passages = page.locator("#passages")
    assert f"1. {MARKUP_TITLE}" in passages.inner_text()
    assert passages.locator(".passage-text").first.inner_text() == f"{MARKUP_TITLE}\n\n{MARKUP_BODY}"
    assert passages.locator(".passage-title").first.inner_text() == f"1. {MARKUP_TITLE}"
    answer.locator(".cite-chip").first.click()
    page.wait_for_selector("#sources mark", timeout=30_000)
    assert page.inner_text("#sources mark") == MARKUP_BODY
    assert page.inner_text("#sources .source-title") == MARKUP_TITLE
    assert page.inner_text("#sources .source-text") == f"{MARKUP_TITLE}\n\n{MARKUP_BODY}"
