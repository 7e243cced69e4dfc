"""Resolve follow-up questions ("Where did he say that?") against the chat history, without an LLM.

A question that leans on an earlier turn (a pronoun, "there", "that company", or too few words to
stand alone) is searched together with the topic words of the previous question and the names in the
previous answer; a self-contained question is searched as asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

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


def names_in(text: str) -> list[str]:
    """Capitalised phrases that are not just a sentence's first function word."""
    names = [m.group(0) for m in _NAME.finditer(CITATION_MARKER.sub("", text))]
    return [n for n in names if n.lower() not in _FUNCTION_WORDS]


def _last(history: Sequence[dict[str, Any]], role: str) -> str:
    for message in reversed(history):
        if message.get("role") == role and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def resolve_followup(question: str, history: Sequence[dict[str, Any]] | None) -> str:
    """The question to search with: the question itself, plus the earlier topic when it needs one."""
    if not history or not needs_context(question):
        return question
    previous_question = _last(history, "user")
    previous_answer = _last(history, "assistant")
    context: list[str] = []
    for word in content_words(previous_question) + names_in(previous_answer)[:4]:
        if word.lower() not in question.lower() and word not in context:
            context.append(word)
    return f"{question} ({' '.join(context)})" if context else question
