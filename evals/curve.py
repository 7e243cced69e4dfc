"""The risk-coverage curve: what abstaining below each threshold on ``Answer.confidence`` would give.

Every question is answered once with abstention switched off, so each has the answer the system would
give and its confidence. At a threshold t the system answers when confidence >= t. For each t:
- coverage: the share of answerable questions answered;
- accuracy: the share of those answers that contain an accepted answer (1 - risk);
- abstained: the share of unanswerable questions left unanswered.
The thresholds are the confidences seen, so nothing is assumed about their scale beyond "higher is
more confident" (a fitted probability or a hand-set score both work).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple


class Graded(NamedTuple):
    """One question as the curve needs it."""

    confidence: float
    answerable: bool
    correct: bool  # the answer (given abstention off) contains an accepted answer


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    coverage: float  # answered / answerable
    accuracy: float | None  # right / answered (None when nothing answerable is answered)
    abstained: float | None  # abstained / unanswerable (None when the set has none)
    answered: int
    right: int
    abstained_count: int


def point_at(graded: Sequence[Graded], threshold: float) -> CurvePoint:
    answerable = [g for g in graded if g.answerable]
    unanswerable = [g for g in graded if not g.answerable]
    answered = [g for g in answerable if g.confidence >= threshold]
    right = sum(g.correct for g in answered)
    abstained = sum(g.confidence < threshold for g in unanswerable)
    return CurvePoint(
        threshold=threshold,
        coverage=len(answered) / len(answerable) if answerable else math.nan,
        accuracy=right / len(answered) if answered else None,
        abstained=abstained / len(unanswerable) if unanswerable else None,
        answered=len(answered),
        right=right,
        abstained_count=abstained,
    )


def sweep(graded: Sequence[Graded]) -> list[CurvePoint]:
    """One point per distinct confidence (answer everything at or above it), highest coverage first,
    then the point past the highest confidence where nothing is answered."""
    thresholds = sorted({g.confidence for g in graded})
    if thresholds:
        thresholds.append(math.inf)
    return [point_at(graded, t) for t in thresholds]


def area_under(points: Sequence[CurvePoint]) -> float | None:
    """Accuracy averaged over coverage (the area under the curve, trapezoids; 1.0 is perfect)."""
    pairs = sorted((p.coverage, p.accuracy) for p in points if p.accuracy is not None)
    if len(pairs) < 2:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(pairs))
    span = pairs[-1][0] - pairs[0][0]
    return round(area / span, 4) if span else None


def curve_json(points: Sequence[CurvePoint], operating: CurvePoint) -> dict[str, Any]:
    def clean(p: CurvePoint) -> dict[str, Any]:
        values = asdict(p)
        values["threshold"] = None if math.isinf(p.threshold) else p.threshold
        return values

    return {
        "operating_point": clean(operating),
        "area_under": area_under(points),
        "points": [clean(p) for p in points],
    }


def plot_curves(curves: dict[str, tuple[list[CurvePoint], CurvePoint]], path: Path) -> None:
    """One panel per set: accuracy and abstention on unanswerable questions against coverage, the
    current threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.4), squeeze=False)
    for ax, (name, (points, operating)) in zip(axes[0], curves.items(), strict=True):
        xs = [p.coverage for p in points if p.accuracy is not None]
        ax.plot(xs, [p.accuracy for p in points if p.accuracy is not None], label="answers right")
        with_unanswerable = [p for p in points if p.abstained is not None]
        if with_unanswerable:
            ax.plot(
                [p.coverage for p in with_unanswerable],
                [p.abstained for p in with_unanswerable],
                label="unanswerable abstained",
                linestyle="--",
            )
        label = f"min_answer_score {operating.threshold:g} (● right, × abstained)"
        if operating.accuracy is not None:
            ax.scatter([operating.coverage], [operating.accuracy], color="black", zorder=3, label=label)
        if operating.abstained is not None:
            ax.scatter([operating.coverage], [operating.abstained], color="black", marker="x", zorder=3)
        ax.axvline(operating.coverage, color="grey", linewidth=0.6)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("coverage: answerable questions answered")
        ax.set_ylabel("share")
        ax.set_title(name)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Risk-coverage: abstaining below each confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
