"""Resolve follow-up questions ("Where did he say that?") against the chat history, without an LLM.

A question that leans on an earlier turn (a pronoun, "there", "that company", or too few words to
stand alone) is searched together with the topic words of the previous question and the names in the
previous answer; a self-contained question is searched as asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rag.errors import QuestionError
from rag.types import CITATION_MARKER

_ANAPHORA = frozenset(
    """
    he him his she her hers they them their theirs it its there then that this those these same such
    former latter
    """.split()
)

_FUNCTION_WORDS = (
    frozenset(
        """
    a an the and or but of to in on at by for with from about as is are was were be been being do does
    did what who whom whose which when where why how many much any some more most other also again else
    too than so if not no yes please tell me us i you we our your can could would should will shall may
    might must has have had
        """.split()
    )
    | _ANAPHORA
)
_WORD = re.compile(r"[\w’'-]+")
_NAME = re.compile(r"\b[A-Z][\w’'-]+(?:\s+(?:[A-Z][\w’'-]+|of|de|van|von|al))*")
# A question with this few content words rarely stands on its own ("And Belarus?", "Why?").
_MIN_STANDALONE_WORDS = 3


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w.lower() not in _FUNCTION_WORDS]


def needs_context(question: str) -> bool:
    words = [w.lower() for w in _WORD.findall(question)]
    return any(w in _ANAPHORA for w in words) or len(content_words(question)) < _MIN_STANDALONE_WORDS


def names_in(text: str, limit: int | None = None) -> list[str]:
    """Capitalised phrases that are not just a sentence's first function word (the first ``limit``
    distinct ones: an answer that opens with its short answer names it twice)."""
    names: dict[str, None] = {}
    for match in _NAME.finditer(CITATION_MARKER.sub("", text)):
        if limit is not None and len(names) >= limit:
            break
        if match.group(0).lower() not in _FUNCTION_WORDS:
            names[match.group(0)] = None
    return list(names)


def validate_history(history: object, *, max_messages: int, max_chars: int) -> list[dict[str, str]] | None:
    """The chat history as a list of ``{"role", "content"}`` messages, or ``QuestionError`` saying what
    is wrong: not a list of such messages, or past the bounds (RAG_MAX_HISTORY_MESSAGES / _CHARS)."""
    if history is None:
        return None
    expected = (
        'The chat history must be a list of messages like {"role": "user", "content": "…"} '
        '(role "user" or "assistant", content a string)'
    )
    if not isinstance(history, list | tuple):
        raise QuestionError(f"{expected}; got a {type(history).__name__}.")
    if len(history) > max_messages:
        raise QuestionError(
            f"The chat history has {len(history):,} messages; the limit is {max_messages:,} "
            "(RAG_MAX_HISTORY_MESSAGES). Start a new conversation or send only the recent turns."
        )
    messages: list[dict[str, str]] = []
    chars = 0
    for i, message in enumerate(history, start=1):
        if not isinstance(message, dict):
            raise QuestionError(f"{expected}; message {i} is a {type(message).__name__}.")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise QuestionError(
                f"{expected}; message {i} has role {str(role)[:20]!r} and a {type(content).__name__} content."
            )
        chars += len(content)
        if chars > max_chars:
            raise QuestionError(
                f"The chat history is over {max_chars:,} characters (RAG_MAX_HISTORY_CHARS). Start a "
                "new conversation or send only the recent turns."
            )
        messages.append({"role": role, "content": content})
    return messages


def recent_history(
    history: Sequence[dict[str, str]], *, max_messages: int, max_chars: int
) -> list[dict[str, str]]:
    """The most recent whole turns that fit both bounds: what a chat UI sends with a follow-up."""
    kept: list[dict[str, str]] = []
    chars = 0
    for message in reversed(history[-max_messages:] if max_messages else []):
        chars += len(message["content"])
        if chars > max_chars:
            break
        kept.append(message)
    kept.reverse()
    while kept and kept[0]["role"] != "user":  # start with a question, not half a turn
        kept.pop(0)
    return kept


def _last(history: Sequence[dict[str, Any]], role: str) -> str:
    for message in reversed(history):
        if message.get("role") == role and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def resolve_followup(question: str, history: Sequence[dict[str, Any]] | None, *, max_names: int) -> str:
    """The question to search with: the question itself, plus the earlier topic when it needs one.
    Linear in the history's length (words are checked against a set, not the list built so far)."""
    if not history or not needs_context(question):
        return question
    previous_question = _last(history, "user")
    previous_answer = _last(history, "assistant")
    asked = question.lower()
    context: dict[str, None] = {}  # ordered, with constant-time membership
    for word in content_words(previous_question) + names_in(previous_answer, max_names):
        if word not in context and word.lower() not in asked:
            context[word] = None
    return f"{question} ({' '.join(context)})" if context else question
