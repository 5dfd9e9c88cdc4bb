"""The shipped models as onnxruntime sessions (the serving path: no training library).

- ``FraudModel``: raw order facts -> ``serve.models.features`` -> the gradient
  boosted trees in ``fraud.onnx`` -> a fraud probability, and a decision from
  the thresholds in ``fraud.card.json`` (``pass`` / ``review`` / ``block``).
- ``RecommenderModel``: ``recommender.onnx`` takes a batch of interaction
  vectors (``history``, one weight per catalog item), a mask of items not to
  recommend (``exclude``) and ``k``; the graph scores every item (item-to-item
  co-occurrence plus a popularity prior) and returns the top ``k`` (``TopK``).
  An empty history scores by popularity alone: the anonymous shopper's answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve.models.features import NAMES, live_matrix

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Interaction weights of the recommender's history vector (training and live).
WEIGHTS = {"view": 1.0, "cart": 2.0, "purchase": 3.0}
RECENT_WEIGHT = 1.0


def compose(history: Mapping[str, float], recent: Sequence[str]) -> dict[str, float]:
    """The model's history vector: older interactions normalised to sum 1, plus
    ``RECENT_WEIGHT`` per recent item (this session's views, the cart)."""
    total = sum(history.values())
    weights = {sku: w / total for sku, w in history.items()} if total > 0 else {}
    for sku in recent:
        weights[sku] = weights.get(sku, 0.0) + RECENT_WEIGHT
    return weights


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``threads`` intra-op threads (the box has 2 cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def card(name: str, directory: Path = ARTIFACTS) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((directory / f"{name}.card.json").read_text())
    return loaded


@dataclass(frozen=True)
class FraudVerdict:
    score: float  # probability of fraud, 0..1
    decision: str  # pass | review | block


class FraudModel:
    def __init__(self, directory: Path = ARTIFACTS, threads: int = 1) -> None:
        self.card = card("fraud", directory)
        self.version = str(self.card["version"])
        self.review_at = float(self.card["thresholds"]["review"])
        self.block_at = float(self.card["thresholds"]["block"])
        self.session = session(directory / "fraud.onnx", threads)
        self._input = self.session.get_inputs()[0].name
        # The columns this version was trained on (its card), taken from the features the
        # code computes: a model trained before a feature was added still loads and scores.
        names = list(self.card["input"]["features"])
        unknown = sorted(set(names) - set(NAMES))
        if unknown:
            raise ValueError(f"fraud model {self.version} needs unknown features {unknown}")
        self._columns = [NAMES.index(name) for name in names]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """P(fraud) for a feature matrix (``features.matrix``: every feature, in ``NAMES``)."""
        if x.shape[1] != len(self._columns) or self._columns != list(range(x.shape[1])):
            x = np.ascontiguousarray(x[:, self._columns])
        out = self.session.run(["probabilities"], {self._input: x})[0]
        return np.asarray(out)[:, 1]

    def decide(self, p: float) -> str:
        return "block" if p >= self.block_at else "review" if p >= self.review_at else "pass"

    def score(self, facts: Sequence[Mapping[str, Any]]) -> list[FraudVerdict]:
        """Verdicts for a batch of raw order facts (``features.RAW_SCHEMA`` keys)."""
        if not facts:
            return []
        p = self.probabilities(live_matrix(facts))
        return [FraudVerdict(float(x), self.decide(float(x))) for x in p]


class RecommenderModel:
    def __init__(self, directory: Path = ARTIFACTS, threads: int = 1) -> None:
        self.card = card("recommender", directory)
        self.version = str(self.card["version"])
        self.skus: list[str] = json.loads((directory / "recommender.items.json").read_text())
        self.index = {sku: i for i, sku in enumerate(self.skus)}
        self.session = session(directory / "recommender.onnx", threads)

    def vectors(
        self, history: Sequence[Mapping[str, float]], exclude: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The graph's inputs: per request, weights by SKU and the SKUs to leave out."""
        n = len(self.skus)
        h = np.zeros((len(history), n), dtype=np.float32)
        x = np.zeros((len(history), n), dtype=np.float32)
        for row, (weights, skip) in enumerate(zip(history, exclude, strict=True)):
            for sku, w in weights.items():
                if sku in self.index:
                    h[row, self.index[sku]] += w
            for sku in skip:
                if sku in self.index:
                    x[row, self.index[sku]] = 1.0
        return h, x

    def top(self, h: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
        """Indices of the top ``k`` items per row (the graph's ``TopK``)."""
        k = max(1, min(k, len(self.skus)))
        out = self.session.run(
            ["items"], {"history": h, "exclude": x, "k": np.array([k], dtype=np.int64)}
        )
        return np.asarray(out[0])

    def recommend(
        self,
        history: Sequence[Mapping[str, float]],
        exclude: Sequence[Sequence[str]],
        k: int,
    ) -> list[list[str]]:
        """SKUs to show per request, best first (never an excluded SKU)."""
        if not history:
            return []
        h, x = self.vectors(history, exclude)
        # Ask for as many more as are excluded: a row with fewer candidates than k
        # would otherwise pad with excluded items (scored -1e9).
        extra = max(len(skip) for skip in exclude)
        out = []
        for row, skip in zip(self.top(h, x, k + extra), exclude, strict=True):
            banned = set(skip)
            out.append([s for s in (self.skus[int(i)] for i in row) if s not in banned][:k])
        return out
