"""Fluent answers from a language model, through LangChain's chat model integrations.

``OpenAIGenerator`` speaks to any OpenAI-compatible server (vLLM, llama.cpp's server, LM Studio, hosted
APIs) and ``OllamaGenerator`` to Ollama. Both stream the reply, stop at ``RAG_LLM_TIMEOUT_S``, and
hand the text to the citation checker; any failure becomes a ``GeneratorError`` with a message for the
reader, never a hang or a traceback.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rag.errors import GeneratorConfigError, GeneratorError
from rag.generate import GenerationRequest, Generator, grounded_answer
from rag.prompts import answer_messages, condense_messages
from rag.types import Answer

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rag.settings import Settings

log = logging.getLogger(__name__)

# What a server that checks no key is sent (the OpenAI client insists on some key).
_NO_KEY = "not-needed"


class ChatModelGenerator(Generator):
    """Any LangChain chat model; a subclass says how to build it."""

    default_base_url: str | None = None

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if not settings.llm_model:
            raise GeneratorConfigError(
                f"RAG_GENERATOR={self.name} needs RAG_LLM_MODEL (the model name as the server knows it)."
            )
        self.base_url = settings.llm_base_url or self.default_base_url
        self._model: BaseChatModel | None = None

    @abstractmethod
    def build_model(self) -> BaseChatModel: ...

    @property
    def model(self) -> BaseChatModel:
        if self._model is None:  # imported and built on first use: the extractive path never pays for it
            self._model = self.build_model()
        return self._model

    def describe(self, exc: BaseException) -> str:
        """A reader's sentence for a failure, by the exception's class (or the one it was raised from)."""
        timeouts, unreachable = _failure_kinds()
        chain = [exc, *(e for e in (exc.__cause__, exc.__context__) if e is not None)]
        where = f" at {self.base_url}" if self.base_url else ""
        if any(isinstance(e, timeouts) for e in chain):
            return (
                f"The language model{where} did not answer within {self.settings.llm_timeout_s:g} s "
                "(RAG_LLM_TIMEOUT_S)."
            )
        if any(isinstance(e, unreachable) for e in chain):
            return f"The language model{where} could not be reached ({exc})."
        return f"The language model{where} failed: {type(exc).__name__}: {exc}"

    def _text_pieces(self, messages: list[tuple[str, str]]) -> Iterator[str]:
        """The reply's text as it streams, stopped at the deadline; failures as ``GeneratorError``."""
        deadline = time.monotonic() + self.settings.llm_timeout_s
        try:
            for chunk in self.model.stream(messages):
                if isinstance(chunk.content, str) and chunk.content:
                    yield chunk.content
                if time.monotonic() > deadline:
                    raise TimeoutError("deadline passed while streaming")
        except GeneratorError:
            raise
        except Exception as exc:  # a plugin boundary: whatever the client raises, the reader gets a sentence
            log.warning("LLM call failed", exc_info=True)
            raise GeneratorError(self.describe(exc)) from exc

    def condense(self, question: str, history: Sequence[dict[str, Any]]) -> str | None:
        if not self.settings.llm_condense:
            return None
        reply = "".join(self._text_pieces(condense_messages(question, history))).strip()
        line = reply.splitlines()[0].strip().strip('"“”') if reply else ""
        return line or None

    def stream(self, request: GenerationRequest) -> Iterator[str | Answer]:
        parts: list[str] = []
        for piece in self._text_pieces(answer_messages(request.search_query, request.passages)):
            parts.append(piece)
            yield piece
        yield grounded_answer("".join(parts), request, self.name)


def _failure_kinds() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeouts, unreachable server) as the HTTP clients under the chat models raise them."""
    timeouts: list[type[BaseException]] = [TimeoutError]
    unreachable: list[type[BaseException]] = [ConnectionError]
    try:
        import httpx  # Ollama's client, and the OpenAI client's transport

        timeouts.append(httpx.TimeoutException)
        unreachable.append(httpx.NetworkError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import openai

        timeouts.append(openai.APITimeoutError)  # a subclass of APIConnectionError: checked first
        unreachable.append(openai.APIConnectionError)
    except ImportError:  # pragma: no cover  (the llm extra is not installed)
        pass
    return tuple(timeouts), tuple(unreachable)


class OpenAIGenerator(ChatModelGenerator):
    """An OpenAI-compatible chat-completions server (``RAG_LLM_BASE_URL`` ends in ``/v1``)."""

    name = "openai"

    def build_model(self) -> BaseChatModel:
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        key = self.settings.llm_api_key or SecretStr(_NO_KEY)
        return ChatOpenAI(
            model=self.settings.llm_model or "",
            base_url=self.base_url,
            api_key=key,
            temperature=self.settings.llm_temperature,
            max_completion_tokens=self.settings.llm_max_tokens,
            timeout=self.settings.llm_timeout_s,
            max_retries=0,  # a retry doubles the wait the timeout promises
        )


class OllamaGenerator(ChatModelGenerator):
    """A model served by Ollama (``ollama serve``; ``RAG_LLM_MODEL`` as in ``ollama list``)."""

    name = "ollama"
    default_base_url = "http://127.0.0.1:11434"

    def build_model(self) -> BaseChatModel:
        from langchain_ollama import ChatOllama

        return ChatOllama(
            model=self.settings.llm_model or "",
            base_url=self.base_url,
            temperature=self.settings.llm_temperature,
            num_predict=self.settings.llm_max_tokens,
            client_kwargs={"timeout": self.settings.llm_timeout_s},
        )
