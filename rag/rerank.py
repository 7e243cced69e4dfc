"""Stage 5a: read the question and a candidate sentence together, and say how likely the sentence answers.

The sentence vectors compare a question and a sentence that were each read alone, so "Who is Ukraine's
foreign minister?" sits close to a sentence about Serbia's foreign minister. A cross-encoder reads the
pair as one input and can see that the country differs. Ours is the packaged MiniLM with its top layers
and a one-number head fine-tuned on SQuAD v1.1 question-sentence pairs (``evals/train_reranker.py``,
``make train``), and its lower layers changed through low-rank adapters; only what was trained ships
(``rag/models/answer_reranker.safetensors``), the rest is the embedding model's own weights. At query
time it re-reads only the few leading candidates.

Like the embedder, it runs under ONNX Runtime (exported once per machine from the packaged base model and
the shipped layers), so a query never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import offline  # noqa: F401  (sets the offline switches before any model library loads)
from rag.embeddings import resolve_model_path
from rag.errors import ModelNotFoundError
from rag.negation import unmatched_negation

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).parent / "models"
WEIGHTS_FILE = MODEL_DIR / "answer_reranker.safetensors"
CARD_FILE = MODEL_DIR / "answer_reranker.json"
# Bump when the export steps change, so machines re-export instead of reusing an old file.
_EXPORT_RECIPE = "pair-scorer-opset17-int8-v2"


@dataclass(frozen=True)
class RerankerCard:
    """What the shipped weights need to be rebuilt and read: the base model, how many of its top layers
    were replaced, and the token limit of a question-sentence pair."""

    base_model: str
    trained_layers: int
    max_tokens: int
    # Platt scaling of the logit into the probability that the sentence answers, and the threshold on it
    # chosen on validation articles (``make train``; see the card's "calibration").
    scale: float
    first_pass_weight: float
    coverage_weight: float
    negation_weight: float
    shift: float
    threshold: float

    @classmethod
    def read(cls, path: Path = CARD_FILE, *, calibrated: bool = True) -> RerankerCard:
        """The card as shipped; ``calibrated=False`` accepts one that `make train` has not yet
        calibrated (its probabilities are then the bare logit's sigmoid), for the calibration itself."""
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
            calibration = card["calibration"] if calibrated else card.get("calibration", {})
            return cls(
                card["base_model"],
                int(card["trained_layers"]),
                int(card["max_tokens"]),
                float(calibration.get("scale", 1.0)),
                float(calibration.get("first_pass_weight", 0.0)),
                float(calibration.get("coverage_weight", 0.0)),
                float(calibration.get("negation_weight", 0.0)),
                float(calibration.get("shift", 0.0)),
                float(calibration.get("threshold", 0.5)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelNotFoundError(
                f"The answer reranker's card {path} is missing or unreadable ({exc})."
            ) from exc


def pair_tokenizer(model_dir: Path, max_tokens: int) -> Any:
    """The base model's tokenizer, encoding (question, sentence) pairs; a long sentence is cut, never the
    question."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_tokens, strategy="only_second")
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tokenizer


def build_pair_scorer(model_dir: Path, trained_layers: int, weights: dict[str, torch.Tensor] | None) -> Any:
    """The torch module: the base encoder read as a pair, mean-pooled, then a linear head to one logit.

    Segment ids stay 0 for both parts, as in the embedding model's own training, so that its frozen lower
    layers see inputs like those they were trained on; the [SEP] token marks where the sentence starts.
    """
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")

    class PairScorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)
            self.trained_layers = trained_layers

        def trainable(self) -> list[torch.nn.Parameter]:
            """The top layers and the head: what fine-tuning changes and what ships."""
            layers = self.encoder.encoder.layer[-self.trained_layers :]
            return [*layers.parameters(), *self.head.parameters()]

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return self.head(pooled).squeeze(-1)  # type: ignore[no-any-return]

    model = PairScorer()
    if weights is not None:
        missing = set(trained_state_names(model)) - set(weights)
        if missing:
            raise ModelNotFoundError(f"The answer reranker's weights lack {sorted(missing)[:3]}…")
        model.load_state_dict(weights, strict=False)  # the adapters' factors are merged next
        merge_low_rank(model, weights)
    return model.eval()


# The linear maps of a BERT layer that a low-rank adapter changes, and the suffixes of an adapter's two
# factors in the weights file (see ``add_low_rank_adapters``).
_ADAPTED_MAPS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_LOW_RANK_A, _LOW_RANK_B = ".low_rank_a", ".low_rank_b"


def add_low_rank_adapters(model: Any, rank: int) -> list[torch.nn.Parameter]:
    """Let training change the frozen lower layers too, each linear map W by a low-rank B·A (LoRA, Hu et
    al. 2021; B starts at zero, so training starts from the base model): a few hundred thousand numbers
    instead of 1.8 MB per layer, so the weights file stays small. Returns the new parameters; the shipped
    weights hold the two factors, merged into W when the model is built (``merge_low_rank``)."""
    import torch

    class Adapted(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.linear = linear
            scale = linear.in_features**-0.5
            self.low_rank_a = torch.nn.Parameter(torch.randn(rank, linear.in_features) * scale)
            self.low_rank_b = torch.nn.Parameter(torch.zeros(linear.out_features, rank))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + (x @ self.low_rank_a.T) @ self.low_rank_b.T  # type: ignore[no-any-return]

    layers = model.encoder.encoder.layer
    added: list[torch.nn.Parameter] = []
    for layer in layers[: len(layers) - model.trained_layers]:
        for path in _ADAPTED_MAPS:
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path)
            adapted = Adapted(getattr(parent, name))
            setattr(parent, name, adapted)
            added += [adapted.low_rank_a, adapted.low_rank_b]
    return added


def merge_low_rank(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Add each shipped adapter's B·A to the linear map it adapted (the model then runs at the base
    model's cost)."""
    import torch

    with torch.no_grad():
        for name, a in weights.items():
            if name.endswith(_LOW_RANK_A):
                path = name.removesuffix(_LOW_RANK_A)
                model.get_submodule(path).weight += weights[path + _LOW_RANK_B] @ a


# The suffix of a packed weight's per-row scales (see ``packed``).
_SCALE = ".int8_scale"


def packed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained weights as shipped: each encoder weight matrix as int8 with an fp16 scale per row (its
    output channel), everything else fp16. 3.6 MB instead of 7.1 in fp16; the ONNX export quantises the
    same rows to int8 per channel anyway, so the model that runs barely changes."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith("encoder.") and tensor.dim() == 2:
            scale = tensor.float().abs().amax(dim=1).clamp(min=1e-12) / 127
            out[name] = torch.round(tensor.float() / scale[:, None]).to(torch.int8).contiguous()
            out[name + _SCALE] = scale.half().contiguous()
        else:
            out[name] = tensor.half().contiguous()
    return out


def read_weights(path: Path = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """The shipped weights, unpacked to float32 (the inverse of ``packed``)."""
    from safetensors.torch import load_file

    stored = load_file(str(path))
    weights = {}
    for name, tensor in stored.items():
        if name.endswith(_SCALE):
            continue
        scale = stored.get(name + _SCALE)
        weights[name] = tensor.float() * scale.float()[:, None] if scale is not None else tensor.float()
    return weights


def trained_state_names(model: Any) -> list[str]:
    """State-dict names of the trained top layers, the head and any low-rank adapters (what the weights
    file holds)."""
    total = len(model.encoder.encoder.layer)
    prefixes = ("head.", *(f"encoder.encoder.layer.{i}." for i in range(total - model.trained_layers, total)))
    return [n for n in model.state_dict() if n.startswith(prefixes) or n.endswith((_LOW_RANK_A, _LOW_RANK_B))]


def onnx_path(card: RerankerCard, cache_dir: Path) -> Path:
    """The exported pair scorer for these weights, exported (once per machine) when missing."""
    base = resolve_model_path(card.base_model)
    if not WEIGHTS_FILE.is_file():
        raise ModelNotFoundError(f"The answer reranker's weights are missing: {WEIGHTS_FILE} (make train).")
    digest = hashlib.sha256(WEIGHTS_FILE.read_bytes())
    digest.update(json.dumps([str(base.resolve()), _EXPORT_RECIPE, card.trained_layers]).encode())
    target = Path(cache_dir).expanduser() / f"answer-reranker-{digest.hexdigest()[:12]}" / "model.onnx"
    if not target.exists():
        try:
            export_onnx(base, card, target)
        except OSError as exc:
            raise ModelNotFoundError(
                f"Cannot write the answer reranker's ONNX export to {target.parent} ({exc}). "
                "Set RAG_MODEL_CACHE_DIR to a writable folder."
            ) from exc
    return target


def export_onnx(base: Path, card: RerankerCard, target: Path) -> None:
    """Base model + shipped layers, exported with torch.onnx to a temporary name and renamed."""
    import torch

    log.info("Exporting the answer reranker to ONNX at %s (once per machine)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = build_pair_scorer(base, card.trained_layers, read_weights())
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with (
        tempfile.TemporaryDirectory(dir=target.parent) as tmp,
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # tracer notes for model authors; tests check the behaviour
        exported = Path(tmp) / "model.onnx"
        quantized = Path(tmp) / "model.int8.onnx"
        torch.onnx.export(
            model,
            (torch.ones_like(mask), mask),
            str(exported),
            input_names=["input_ids", "attention_mask"],
            output_names=["logit"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
            },
            opset_version=17,
            dynamo=False,
        )
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # int8 weights per channel: 22 against 65 ms for six pairs on 2 cores; the calibration is fitted
        # on this runtime's logits (evals/fit_confidence.py), so it describes what runs.
        quantize_dynamic(str(exported), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(quantized, target)


class AnswerReranker:
    """Logits that a sentence answers a question (higher: more likely), for a handful of sentences."""

    def __init__(self, cache_dir: Path, threads: int = 1, card: RerankerCard | None = None) -> None:
        self.card = card or RerankerCard.read()
        self.cache_dir = cache_dir
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3
                # One run of a few pairs, split over the cores (unlike the embedder's many small runs).
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                path = onnx_path(self.card, self.cache_dir)
                self._tokenizer = pair_tokenizer(
                    resolve_model_path(self.card.base_model), self.card.max_tokens
                )
                self._session = onnxruntime.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            return self._session, self._tokenizer

    def prepare(self) -> None:
        """Export (if this machine has not yet) and open the model now rather than on the first question."""
        self._load()

    def logits(self, question: str, sentences: list[str]) -> np.ndarray:
        if not sentences:
            return np.zeros(0, dtype=np.float32)
        session, tokenizer = self._load()
        encodings = tokenizer.encode_batch([(question, s) for s in sentences])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return np.asarray(session.run(None, {"input_ids": ids, "attention_mask": mask})[0], dtype=np.float32)

    def probabilities(
        self, question: str, sentences: list[str], first_pass: np.ndarray | None = None, coverage: float = 0.0
    ) -> np.ndarray:
        """The calibrated probability that each sentence answers the question, from the reranker's logit,
        the first pass's score (which knows the passage's rank; the reranker does not), how much of
        the question's vocabulary the top passages hold, and whether a negated question meets a sentence
        that negates nothing (the reranker never saw a negated question)."""
        logits = self.logits(question, sentences).astype(np.float64)
        prior = np.zeros(len(sentences)) if first_pass is None else np.asarray(first_pass, dtype=np.float64)
        unmatched = np.array([unmatched_negation(question, s) for s in sentences], dtype=np.float64)
        card = self.card
        z = (
            card.scale * logits
            + card.first_pass_weight * prior
            + card.coverage_weight * coverage
            + card.negation_weight * unmatched
            + card.shift
        )
        return np.asarray(1 / (1 + np.exp(-z)), dtype=np.float32)


@lru_cache(maxsize=2)
def load_reranker(cache_dir: str, threads: int) -> AnswerReranker:
    """One reranker per process (its session costs a second to open)."""
    return AnswerReranker(Path(cache_dir), threads)
