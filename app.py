"""The web chat: a thin Gradio layer over ``rag.query``. Run it with ``rag serve`` or ``python app.py``.

Everything an article says is escaped before it reaches the page: answers, quotes, titles and the
sources panel show article text as text, never as HTML, Markdown or math, character for character.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from rag import offline  # noqa: F401  (offline switches, before gradio imports huggingface_hub)

# isort: split
import gradio as gr
from starlette.middleware import Middleware

import rag
from rag.errors import IndexBusyError, RagError
from rag.followup import recent_history
from rag.types import CITATION_MARKER, Answer, Citation

EXAMPLES = [
    "Which countries have offered to host peace talks?",
    "What did the foreign minister say about territorial integrity?",
    "Why is the proposed mediator's neutrality questioned?",
]
UPLOAD_TYPES = [".txt", ".md", ".markdown", ".html", ".htm"]
_SOURCE_CONTEXT_CHARS = 1200  # article text shown around a highlighted quote, on each side

Messages = list[dict[str, Any]]
Cited = dict[str, dict[str, Any]]  # "turn:n" -> Citation as a dict

_THEME = gr.themes.Default(  # system fonts only: nothing is fetched from a font CDN at page load
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
_CSS = """
.cite-chip { display:inline-block; padding:0 .45em; margin:0 .1em; border-radius:.8em; cursor:pointer;
             background:#e0e7ff; color:#3730a3; font-size:.85em; font-weight:600; user-select:none; }
.cite-chip:hover { background:#c7d2fe; }
.not-found { border-left:4px solid #f59e0b; background:#fffbeb; padding:.5em .8em; color:#78350f; }
.refs { font-size:.9em; color:#374151; }
.short-answer { font-size:1.2em; font-weight:600; margin-bottom:.3em; }
.notice { border-left:4px solid #9ca3af; background:#f3f4f6; padding:.3em .8em; margin-bottom:.5em;
          font-size:.9em; color:#374151; }
.uncited { text-decoration:underline dotted #b45309; }
.uncited::after { content:" (uncited)"; font-size:.8em; color:#b45309; }
#sources { white-space:pre-wrap; line-height:1.5; }
#sources mark { background:#fde68a; padding:.1em 0; }
#sources h3 { position:sticky; top:0; background:var(--block-background-fill, #fff); margin-top:0; }
"""
# A document-wide listener turns a click on a chip into a "cite" event of the sources panel. The chat's
# sanitiser drops data- attributes, so the citation rides in a class: cite-<turn>-<n>.
_CHIP_LISTENER = """
window.ragCiteTrigger = trigger;  // the latest mount's trigger; the listener is installed once
if (!window.ragCiteListener) {
  window.ragCiteListener = true;
  document.addEventListener('click', (event) => {
    const chip = event.target.closest('.cite-chip');
    if (!chip) return;
    const key = Array.from(chip.classList).find((c) => /^cite-\\d+-\\d+$/.test(c));
    if (key) window.ragCiteTrigger('cite', {key: key.slice(5).replace('-', ':')});
  });
}
"""
_SCROLL_TO_QUOTE = (
    "() => { const m = document.querySelector('#sources mark'); if (m) m.scrollIntoView({block: 'center'}); }"
)


# Characters that HTML or Markdown (with GFM tables, strikethrough) could read as syntax become numeric
# entities, in one pass: escaping in two passes once turned the first pass's "&#x27;" into visible text.
# New lines become <br>, so the only line start Markdown sees is the text's first: a list marker there
# ("1. ", "- ", "+ ") is escaped too. "$" needs nothing: the chat renders no LaTeX (latex_delimiters=[]).
# Quotes and apostrophes stay as they are in text (no attribute is built from safe()), so the chat's
# copy button copies "Serbia's", not "Serbia&#39;s".
_ENTITIES = {char: f"&#{ord(char)};" for char in "&<>*_[]`#|~\\"}
_ENTITIES["\n"] = "<br>"
_LIST_MARKER = re.compile(r"[ \t]*(?:\d{1,9}[.)]|[-+])(?=[ \t]|$)")


def safe(text: str) -> str:
    """Article text is data: the page shows it exactly as written, never as markup or math."""
    escaped = "".join(_ENTITIES.get(char, char) for char in text)
    marker = _LIST_MARKER.match(escaped)
    if marker:
        at = marker.end() - 1
        escaped = f"{escaped[:at]}&#{ord(escaped[at])};{escaped[at + 1 :]}"
    return escaped


def chip(turn: int, citation: Citation) -> str:
    label = f"[{citation.n}] {citation.title}"
    return (
        f'<span class="cite-chip cite-{turn}-{citation.n}" title="{html.escape(label)}" '
        f'role="button">{citation.n}</span>'
    )


def format_answer(answer: Answer, turn: int) -> str:
    """The chat message: a notice if any, the answer with clickable chips, then the numbered references."""
    notice = f'<div class="notice">⚠️ {safe(answer.notice)}</div>' if answer.notice else ""
    if not answer.found:
        searched = "; ".join(dict.fromkeys(p.title for p in answer.passages)) or "no articles"
        return (
            f'{notice}<div class="not-found"><strong>Not found in the articles.</strong> {safe(answer.text)}'
            f"<br><small>Searched the closest passages in: {safe(searched)}</small></div>"
        )
    by_n = {c.n: c for c in answer.citations}
    # The short answer (a name, place, date or number the text starts with) stands above its evidence.
    pieces, at = [], 0
    lead = f"{answer.short_answer} — " if answer.short_answer else ""
    if lead and answer.text.startswith(lead):
        pieces.append(f'<div class="short-answer">{safe(answer.short_answer or "")}</div>')
        at = len(lead)
    # Only the writer's markers become chips (an article's own "[2]" inside a quote stays text); a
    # marker that names no citation is dropped.
    for marker in answer.markers():
        pieces.append(safe(answer.text[at : marker.start]))
        pieces.append(chip(turn, by_n[marker.n]) if marker.n in by_n else "")
        at = marker.end
    body = "".join(pieces) + safe(answer.text[at:])
    for sentence in answer.uncited:
        body = body.replace(
            safe(sentence),
            f'<span class="uncited" title="No cited passage supports this sentence">{safe(sentence)}</span>',
            1,
        )
    refs = "<br>".join(
        f"[{c.n}] <strong>{safe(c.title)}</strong>: “{safe(c.quote)}”" for c in answer.citations
    )
    return f'{notice}{body}<div class="refs"><br>{refs}</div>'


def safe_keep_markers(text: str) -> str:
    """The text as it streams in, escaped; ``[n]`` markers stay plain text until the checked answer."""
    parts = CITATION_MARKER.split(text)
    return "".join(safe(p) if i % 2 == 0 else f"[{p}]" for i, p in enumerate(parts))


def format_passages(answer: Answer) -> str:
    rows = [
        f'<p><strong class="passage-title">{i}. {safe(p.title)}</strong> <small>(score {p.score:.4f}, '
        f'chars {p.start}–{p.end})</small><br><span class="passage-text">{safe(p.text)}</span></p>'
        for i, p in enumerate(answer.passages, start=1)
    ]
    return "<hr>".join(rows) or "<em>No passages.</em>"


def format_source(citation: dict[str, Any]) -> str:
    """The cited article around the quote, the quote highlighted, with its title, outlet and date."""
    article = rag.article(citation["article_id"])
    start, end = citation["start"], citation["end"]
    left = max(0, start - _SOURCE_CONTEXT_CHARS)
    right = min(len(article.text), end + _SOURCE_CONTEXT_CHARS)
    meta = " · ".join(safe(x) for x in (article.outlet, article.date) if x)
    return (
        f'<h3>[{citation["n"]}] <span class="source-title">{safe(article.title)}</span></h3>'
        + (f"<p><small>{meta}</small></p>" if meta else "")
        + f"<p><small>characters {start}–{end} of {len(article.text)}</small></p>"
        + ("…" if left else "")
        + '<span class="source-text">'
        + safe(article.text[left:start])
        + f'<mark id="quote">{safe(article.text[start:end])}</mark>'
        + safe(article.text[end:right])
        + "</span>"
        + ("…" if right < len(article.text) else "")
    )


def respond(
    message: str, shown: Messages, plain: Messages, cited: Cited
) -> Iterator[tuple[Messages, Messages, Cited, str, str]]:
    """One chat turn, streamed as the generator writes; ``plain`` is the unformatted history for follow-ups.

    The streamed text is the generator's raw output; the final message is the checked answer, whose
    citations were verified after the last token (so markers may change or go when it lands).
    """
    shown, plain, cited = list(shown or []), list(plain or []), dict(cited or {})
    turn = len(plain) // 2 + 1
    asked = {"role": "user", "content": safe(message)}
    written, answer = "", None
    settings = rag.get_pipeline().settings
    recent = recent_history(  # a long chat sends its latest turns, within the history bounds
        plain, max_messages=settings.max_history_messages, max_chars=settings.max_history_chars
    )
    try:
        for piece in rag.stream(message, history=recent):
            if isinstance(piece, Answer):
                answer = piece
                break
            written += piece
            partial = {"role": "assistant", "content": safe_keep_markers(written)}
            yield [*shown, asked, partial], plain, cited, "", ""
    except RagError as exc:
        shown.append({"role": "assistant", "content": f"⚠️ {safe(str(exc))}"})
        yield shown, plain, cited, message, ""
        return
    assert answer is not None, "the pipeline ends every stream with an Answer"
    shown.append(asked)
    shown.append({"role": "assistant", "content": format_answer(answer, turn)})
    plain += [{"role": "user", "content": message}, {"role": "assistant", "content": answer.text}]
    for c in answer.citations:
        cited[f"{turn}:{c.n}"] = c.model_dump()
    yield shown, plain, cited, "", format_passages(answer)


def show_source(cited: Cited, event: gr.EventData) -> str:
    citation = (cited or {}).get(str(getattr(event, "key", "")))
    return (
        format_source(citation) if citation else "<em>That citation is no longer in this conversation.</em>"
    )


def library_rows() -> list[list[Any]]:
    return [
        [a.title, a.outlet or "", a.date or "", len(a.chunks), a.id]
        for a in sorted(rag.list_articles(), key=lambda a: a.title.lower())
    ]


def upload(files: list[Any] | None, progress: gr.Progress = gr.Progress()) -> tuple[str, list[list[Any]]]:  # noqa: B008
    """Add uploaded files to the corpus folder and index them; every refusal says why."""
    if not files:
        return "Choose one or more .txt, .md or .html files first.", library_rows()
    progress(0.1, desc="Reading and indexing…")
    pairs = [
        (getattr(f, "name", f), os.path.basename(getattr(f, "orig_name", None) or getattr(f, "name", f)))
        for f in files
    ]
    try:
        report = rag.add_files(pairs, on_wait=lambda: progress(0.2, desc="Queued behind another ingest…"))
    except IndexBusyError:  # another ingest outlasted RAG_INGEST_WAIT_S
        return (
            "⏳ Another ingest is still running. Your files are saved in the corpus folder and will be "
            "indexed by the next ingest or restart.",
            library_rows(),
        )
    except RagError as exc:  # the disk is full, the folder is read-only, …
        return f"⚠️ {safe(str(exc))}", library_rows()
    progress(1.0, desc="Done")
    lines = []
    if report.added or report.updated:
        lines.append(
            f"✅ Indexed {len(report.added) + len(report.updated)} article(s): "
            + ", ".join(safe(i) for i in report.added + report.updated)
        )
    if report.unchanged:
        lines.append(f"Already indexed: {', '.join(safe(i) for i in report.unchanged)}")
    for skipped in report.skipped:
        lines.append(f"❌ {safe(os.path.basename(skipped.path))}: {safe(skipped.reason)}")
    return "<br>".join(lines) or "Nothing to add.", library_rows()


def ask(question: str, history: Any = None) -> dict[str, Any]:
    """The ``/ask`` API endpoint: the Answer as JSON (or ``{"error": …}`` for a refused question or
    history). ``history`` is whatever JSON the caller sent: the pipeline checks it."""
    try:
        return rag.query(question, history=history if history not in (None, [], "") else None).model_dump()
    except RagError as exc:
        return {"error": str(exc)}


def new_conversation() -> tuple[Messages, Messages, Cited, str, str]:
    return [], [], {}, "", "<em>Click a citation number in an answer to see it in its article.</em>"


def build_app() -> gr.Blocks:
    with gr.Blocks(title="News Q&A", analytics_enabled=False) as demo:
        plain, cited = gr.State([]), gr.State({})
        gr.Markdown(
            "## Ask the articles\nAnswers quote the articles verbatim; click a number to see the source."
        )
        with gr.Tab("Chat"), gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=520,
                    elem_id="chat",
                    buttons=["copy"],
                    sanitize_html=True,
                    feedback_options=None,
                    latex_delimiters=[],  # "$$x^2$$" in an article or a question is text, not math
                )
                with gr.Row():
                    box = gr.Textbox(
                        placeholder="Ask a question about the articles…",
                        show_label=False,
                        scale=8,
                        elem_id="question",
                    )
                    send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                    clear = gr.Button("New conversation", scale=1, elem_id="new-conversation")
                gr.Examples(EXAMPLES, inputs=box)
                with gr.Accordion("Retrieved passages (with scores)", open=False):
                    passages = gr.HTML(elem_id="passages")
            with gr.Column(scale=2):
                gr.Markdown("### Sources")
                sources = gr.HTML(
                    "<em>Click a citation number in an answer to see it in its article.</em>",
                    elem_id="sources",
                    js_on_load=_CHIP_LISTENER,
                    max_height=600,
                )
        with gr.Tab("Library"):
            library = gr.Dataframe(
                library_rows,
                headers=["title", "outlet", "date", "chunks", "id"],
                interactive=False,
                elem_id="library",
            )
            files = gr.File(
                label="Add articles (.txt, .md, .html)",
                file_count="multiple",
                file_types=UPLOAD_TYPES,
                elem_id="upload",
            )
            add = gr.Button("Add to library", variant="primary", elem_id="add-articles")
            status = gr.HTML(elem_id="upload-status")

        turn_io = ([box, chatbot, plain, cited], [chatbot, plain, cited, box, passages])
        for trigger in (box.submit, send.click):
            trigger(respond, *turn_io, api_visibility="private")
        clear.click(new_conversation, None, [chatbot, plain, cited, box, sources], api_visibility="private")
        sources.cite(show_source, cited, sources, api_visibility="private").then(None, js=_SCROLL_TO_QUOTE)
        add.click(upload, files, [status, library], api_name="upload")  # scripts may add articles too

        api_question, api_history, api_answer = (
            gr.Textbox(visible=False),
            gr.JSON(visible=False),
            gr.JSON(visible=False),
        )
        gr.Button(visible=False).click(ask, [api_question, api_history], api_answer, api_name="ask")
    return demo  # type: ignore[no-any-return]  # gradio's context manager is untyped


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class LoginThrottle:
    """ASGI middleware in front of Gradio's ``POST /login``: a client's attempts are checked one at a
    time, and after each failure the next waits twice as long (``login_delay_s`` doubling, at most
    ``login_max_delay_s``); a success clears the record. The client is the connecting address, so
    behind a reverse proxy every visitor shares one record: the proxy should limit logins itself."""

    def __init__(self, app: ASGIApp, delay_s: float, max_delay_s: float) -> None:
        self.app, self.delay_s, self.max_delay_s = app, delay_s, max_delay_s
        self.failures: dict[str, int] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def delay(self, failures: int) -> float:
        return min(self.max_delay_s, self.delay_s * 2 ** (failures - 1)) if failures else 0.0

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].rstrip("/").endswith("/login")
        ):
            await self.app(scope, receive, send)
            return
        client = str((scope.get("client") or ("unknown",))[0])
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        async with self.locks.setdefault(client, asyncio.Lock()):
            await asyncio.sleep(self.delay(self.failures.get(client, 0)))
            await self.app(scope, receive, watch)
            if status and status[0] < 400:
                self.failures.pop(client, None)
            elif status and status[0] in (400, 401, 403):
                self.failures[client] = self.failures.get(client, 0) + 1


def launch(host: str | None = None, port: int | None = None) -> None:
    settings = rag.get_pipeline().settings
    rag.get_pipeline().ensure_ready()  # build the index before the first visitor waits for it
    auth = tuple(settings.auth.split(":", 1)) if settings.auth else None  # validated: "user:password"
    throttle = Middleware(
        LoginThrottle, delay_s=settings.login_delay_s, max_delay_s=settings.login_max_delay_s
    )
    build_app().queue(default_concurrency_limit=settings.queue_concurrency).launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME") or settings.host,
        server_port=port or int(os.environ.get("GRADIO_SERVER_PORT") or settings.port),
        share=False,
        auth=auth,
        max_file_size=settings.max_file_bytes,
        theme=_THEME,
        css=_CSS,
        footer_links=["api"],
        app_kwargs={"middleware": [throttle]},
    )


if __name__ == "__main__":
    try:
        launch()
    except RagError as exc:
        sys.exit(f"Error: {exc}")
