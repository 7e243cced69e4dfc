"""Stage 5b: the fitted answer scorer: logistic models over the features of `rag/answer_features.py`.

The weights are data (`rag/models/answer_scorer.json`), fitted by `evals/train_scorer.py` (`make train`)
on SQuAD v1.1 train questions run through this pipeline. Scoring is a dot product in numpy: no
machine-learning library is imported when answering.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rag.answer_features import EVIDENCE_FEATURES, LEADER_FEATURES, SENTENCE_FEATURES

MODEL_FILE = Path(__file__).parent / "models" / "answer_scorer.json"


@dataclass(frozen=True)
class Logistic:
    """A standardised logistic model: logit = ((x - mean) / scale) @ coef + intercept."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def from_dict(cls, data: dict[str, Any], expected: tuple[str, ...]) -> Logistic:
        features = tuple(data["features"])
        if features != expected:
            raise ValueError(f"model features {features} differ from the code's {expected}: run `make train`")
        return cls(
            features=features,
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            coef=np.asarray(data["coef"], dtype=np.float64),
            intercept=float(data["intercept"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "coef": [round(float(v), 6) for v in self.coef],
            "intercept": round(self.intercept, 6),
        }

    def logit(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0)
        result: np.ndarray = ((rows - self.mean) / self.scale) @ self.coef + self.intercept
        return result

    def probability(self, rows: np.ndarray) -> np.ndarray:
        result: np.ndarray = 1.0 / (1.0 + np.exp(-self.logit(rows)))
        return result


@dataclass(frozen=True)
class AnswerModel:
    """Three small models: rank every candidate sentence (``sentence``), re-rank the leaders with their
    stand-alone embedding (``leader``), and the probability that the chosen quote answers (``evidence``)."""

    sentence: Logistic
    leader: Logistic
    evidence: Logistic
    meta: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerModel:
        return cls(
            sentence=Logistic.from_dict(data["sentence"], SENTENCE_FEATURES),
            leader=Logistic.from_dict(data["leader"], LEADER_FEATURES),
            evidence=Logistic.from_dict(data["evidence"], EVIDENCE_FEATURES),
            meta={k: v for k, v in data.items() if k not in ("sentence", "leader", "evidence")},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.meta,
            "sentence": self.sentence.as_dict(),
            "leader": self.leader.as_dict(),
            "evidence": self.evidence.as_dict(),
        }


@lru_cache(maxsize=4)
def load_model(path: Path = MODEL_FILE) -> AnswerModel:
    return AnswerModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
