"""Stage 6: who writes the answer. Generators are plugins behind one small interface.

The pipeline always computes the extractive answer first: it is cheap, it decides whether the articles
answer at all (a generator is never asked to answer what the evidence cannot), and it is what the reader
gets whenever another generator fails. A generator then turns the question and the numbered passages
into the final answer, streaming its text as it goes.

Generators are found by name (``RAG_GENERATOR``) among the built-ins below and the ``rag.generators``
entry points of installed packages; the built-ins are listed exactly like a third-party plugin's would be.
A plugin subclasses ``Generator``, sets ``name``, and declares itself in its own ``pyproject.toml``::

    [project.entry-points."rag.generators"]
    mymodel = "my_package.module:MyGenerator"
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from rag.answer import NOT_FOUND
from rag.errors import GeneratorConfigError, GeneratorError
from rag.types import Answer, Passage

if TYPE_CHECKING:
    from rag.grounding import Grounder
    from rag.settings import Settings

ENTRY_POINT_GROUP = "rag.generators"
BUILT_IN = {
    "extractive": "rag.generate:ExtractiveGenerator",
    "openai": "rag.llm:OpenAIGenerator",
    "ollama": "rag.llm:OllamaGenerator",
}


@dataclass
class GenerationRequest:
    question: str  # as asked
    search_query: str  # standalone form (follow-ups resolved): what was searched, and what to answer
    passages: Sequence[Passage]
    draft: Answer  # the extractive answer: it decided that the articles answer, and it is the fallback
    grounder: Grounder  # checks [n] markers against the passages


class Generator(ABC):
    """Turns a question and numbered passages into an answer whose citations are verbatim quotes."""

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def condense(self, question: str, history: Sequence[dict[str, Any]]) -> str | None:
        """A follow-up rewritten to stand alone, or None to let the built-in heuristic do it."""
        return None

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[str | Answer]:
        """Pieces of the answer text as they are written, then the final ``Answer``. Raises
        ``GeneratorError`` when it cannot answer; the pipeline then falls back to the extractive one."""


class ExtractiveGenerator(Generator):
    """The offline default: the draft itself, the answering sentences quoted from the articles."""

    name = "extractive"

    def stream(self, request: GenerationRequest) -> Iterator[str | Answer]:
        words = request.draft.text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "
        yield request.draft


def grounded_answer(reply: str, request: GenerationRequest, generator: str) -> Answer:
    """A generated reply as an ``Answer`` whose markers and citations have been checked.

    A reply saying the passages do not answer is taken at its word; a reply with no sentence that a
    passage supports is refused (``GeneratorError``), so the reader gets the extractive answer instead.
    """
    grounded = request.grounder.ground(reply, list(request.passages))
    fields = {
        "confidence": request.draft.confidence,
        "passages": list(request.passages),
        "question": request.question,
        "search_query": request.search_query,
        "generator": generator,
    }
    if grounded.abstained:
        return Answer(text=NOT_FOUND, found=False, **fields)
    if not grounded.citations:
        raise GeneratorError(
            "The language model's answer cited no passage that supports it, so it is not shown."
        )
    notice = None
    if grounded.removed_markers or grounded.uncited:
        notice = (
            f"{grounded.removed_markers} citation(s) that no passage supports were removed; "
            f"{len(grounded.uncited)} sentence(s) have no supported citation"
            + (" and were dropped." if request.grounder.settings.llm_uncited == "drop" else " (flagged).")
        )
    return Answer(
        text=grounded.text,
        found=True,
        citations=grounded.citations,
        uncited=grounded.uncited if request.grounder.settings.llm_uncited == "flag" else [],
        notice=notice,
        **fields,
    )


def available_generators() -> dict[str, str]:
    """Generator name -> ``module:Class``, built-ins first, then installed plugins."""
    found = dict(BUILT_IN)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point.value)
    return found


def make_generator(settings: Settings) -> Generator:
    known = available_generators()
    target = known.get(settings.generator)
    if target is None:
        raise GeneratorConfigError(
            f"Unknown generator '{settings.generator}' (RAG_GENERATOR). Available: {', '.join(known)}."
        )
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise GeneratorConfigError(
            f"Generator '{settings.generator}' needs a package that is not installed ({exc.name}). "
            "Install the LLM extra: pip install -e '.[llm]'."
        ) from exc
    generator: Generator = cls(settings)
    return generator
