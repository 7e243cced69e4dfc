"""Every prompt the product sends to a language model, in one place.

The answer prompt numbers the retrieved passages and asks for ``[n]`` markers; whatever comes back is
checked against those passages (``rag.grounding``) before a reader sees it, so the prompt asks for good
behaviour but nothing relies on the model having obeyed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag.types import Passage

# The reply that means "these passages do not answer": easy to ask for, easy to recognise.
NOT_FOUND_REPLY = "NOT FOUND"

ANSWER_SYSTEM = f"""You answer questions about news articles using only the numbered passages given.
Rules:
- Use only facts stated in the passages. Do not add outside knowledge.
- After every sentence, cite the passage(s) it comes from by number in square brackets: [2] or [1][3].
- Answer in at most three short sentences.
- If the passages do not contain the answer, reply with exactly: {NOT_FOUND_REPLY}"""

ANSWER_USER = """Passages:
{passages}

Question: {question}"""

CONDENSE_SYSTEM = """Rewrite the user's last question so that it can be understood without the conversation.
Replace pronouns and vague references with the names and things they refer to.
Reply with the rewritten question only, on one line. If it already stands on its own, repeat it unchanged."""

CONDENSE_USER = """Conversation:
{conversation}

Last question: {question}"""


def format_passages(passages: Sequence[Passage]) -> str:
    """``[n] (title) text`` blocks; n is what the model cites and what the checker resolves."""
    return "\n\n".join(f"[{n}] ({p.title}) {p.text}" for n, p in enumerate(passages, start=1))


def answer_messages(question: str, passages: Sequence[Passage]) -> list[tuple[str, str]]:
    return [
        ("system", ANSWER_SYSTEM),
        ("human", ANSWER_USER.format(passages=format_passages(passages), question=question)),
    ]


def condense_messages(question: str, history: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    conversation = "\n".join(
        f"{m.get('role', 'user')}: {m.get('content', '')}"
        for m in history
        if isinstance(m.get("content"), str)
    )
    return [
        ("system", CONDENSE_SYSTEM),
        ("human", CONDENSE_USER.format(conversation=conversation, question=question)),
    ]
