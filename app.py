"""The web chat: a thin Gradio layer over ``rag.query``. Run it with ``rag serve`` or ``python app.py``."""

from __future__ import annotations

import html
import os
from typing import Any

import gradio as gr

import rag
from rag import offline  # noqa: F401  (analytics off before gradio is imported)
from rag.types import Answer

EXAMPLES = [
    "Which countries have offered to host peace talks?",
    "What did the foreign minister say about territorial integrity?",
    "Why is the proposed mediator's neutrality questioned?",
]
_THEME = gr.themes.Default(  # system fonts only: nothing is fetched from a font CDN at page load
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


def _safe(text: str) -> str:
    """Article text is data: shown as text, never interpreted as HTML or Markdown."""
    escaped = html.escape(text, quote=False)
    return escaped.replace("*", "&#42;").replace("_", "&#95;").replace("[", "&#91;").replace("`", "&#96;")


def format_answer(answer: Answer) -> str:
    if not answer.found:
        titles = "; ".join(dict.fromkeys(p.title for p in answer.passages)) or "no articles"
        return f"**Not found in the articles.** {_safe(answer.text)}\n\n_Searched: {_safe(titles)}_"
    lines = [_safe(answer.text), ""]
    for c in answer.citations:
        lines.append(f"> **[{c.n}] {_safe(c.title)}**  \n> “{_safe(c.quote)}”  \n> _chars {c.start}–{c.end}_")
    return "\n".join(lines)


def format_passages(answer: Answer) -> str:
    rows = [
        f"**{i}. {_safe(p.title)}** (score {p.score:.4f})\n\n{_safe(p.text)}"
        for i, p in enumerate(answer.passages, start=1)
    ]
    return "\n\n---\n\n".join(rows) or "_No passages._"


Messages = list[dict[str, Any]]


def respond(message: str, shown: Messages, plain: Messages) -> tuple[Messages, Messages, str, str]:
    """One chat turn. ``plain`` is the unformatted history that follow-up resolution reads."""
    from rag.pipeline import QuestionError

    shown, plain = list(shown or []), list(plain or [])
    try:
        answer = rag.query(message, history=plain)
    except QuestionError as exc:
        return [*shown, {"role": "assistant", "content": f"⚠️ {_safe(str(exc))}"}], plain, message, ""
    shown += [
        {"role": "user", "content": _safe(message)},
        {"role": "assistant", "content": format_answer(answer)},
    ]
    plain += [{"role": "user", "content": message}, {"role": "assistant", "content": answer.text}]
    return shown, plain, "", format_passages(answer)


def ask(question: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The ``/ask`` API endpoint: the Answer as JSON."""
    from rag.pipeline import QuestionError

    try:
        return rag.query(question, history=history or None).model_dump()
    except QuestionError as exc:
        return {"error": str(exc)}


def build_app() -> gr.Blocks:
    with gr.Blocks(title="News Q&A", analytics_enabled=False) as demo:
        gr.Markdown("## Ask the articles\nAnswers quote the articles verbatim and cite them.")
        plain_history = gr.State([])
        chatbot = gr.Chatbot(label="Chat", height=480, sanitize_html=True, elem_id="chat")
        with gr.Row():
            box = gr.Textbox(
                placeholder="Ask a question about the articles…",
                show_label=False,
                scale=8,
                elem_id="question",
            )
            send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
        gr.Examples(EXAMPLES, inputs=box)
        with gr.Accordion("Retrieved passages", open=False):
            passages = gr.Markdown(elem_id="passages")
        for trigger in (box.submit, send.click):
            trigger(
                respond,
                [box, chatbot, plain_history],
                [chatbot, plain_history, box, passages],
                api_visibility="private",
            )
        api_q = gr.Textbox(visible=False)
        api_h = gr.JSON(visible=False)
        api_out = gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)
        api_btn.click(ask, [api_q, api_h], api_out, api_name="ask")
    return demo  # type: ignore[no-any-return]  # gradio's context manager is untyped


def launch(host: str | None = None, port: int | None = None) -> None:
    settings = rag.get_pipeline().settings
    rag.get_pipeline().ensure_ready()  # build the index before the first visitor waits for it
    build_app().launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME") or settings.host,
        server_port=port or int(os.environ.get("GRADIO_SERVER_PORT") or settings.port),
        share=False,
        theme=_THEME,
    )


if __name__ == "__main__":
    launch()
