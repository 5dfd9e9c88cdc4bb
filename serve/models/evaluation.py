"""Held-out splits and metrics (numpy and polars only: evaluation needs no training library).

Shoppers are split by a stable hash of their id: 60% train, 20% validation
(thresholds), 20% test (the figures ``agora models evaluate`` prints). Training
never sees a test shopper's orders; for the recommender, the test shoppers'
*last* session with a cart is held out (their earlier sessions are history,
both for training and as the context the model is asked to complete).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from serve.models.features import fraud_features, matrix
from serve.models.scoring import WEIGHTS, FraudModel, RecommenderModel, compose
from serve.models.simulation import Simulation


def split_of(user_id: str) -> str:
    bucket = zlib.crc32(user_id.encode()) % 5
    return "train" if bucket < 3 else "val" if bucket == 3 else "test"


def with_split(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(split=pl.col("user_id").map_elements(split_of, return_dtype=pl.Utf8))


def fraud_xy(sim: Simulation, split: str) -> tuple[np.ndarray, np.ndarray]:
    part = with_split(sim.orders).filter(pl.col("split") == split)
    return matrix(fraud_features(part)), part["is_fraud"].to_numpy().astype(np.int64)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at every distinct score, highest threshold first."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # end of each tie group
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / max(1, int(y.sum()))
    return precision, recall, ps[last]


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision: sum over thresholds of precision x recall gained."""
    precision, recall, _ = pr_curve(y, p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fraud_metrics(model: FraudModel, sim: Simulation, split: str = "test") -> dict[str, Any]:
    x, y = fraud_xy(sim, split)
    p = model.probabilities(x)
    decisions = np.array([model.decide(float(v)) for v in p])
    flagged = decisions != "pass"
    return {
        "roc_auc": round(roc_auc(y, p), 4),
        "pr_auc": round(pr_auc(y, p), 4),
        "orders": len(y),
        "fraud_rate": round(float(y.mean()), 4),
        "fraud_caught_blocked": round(float((decisions[y == 1] == "block").mean()), 4),
        "fraud_caught_held_or_blocked": round(float(flagged[y == 1].mean()), 4),
        "legit_held_or_blocked": round(float(flagged[y == 0].mean()), 4),
        "legit_blocked": round(float((decisions[y == 0] == "block").mean()), 4),
    }


@dataclass(frozen=True)
class RecSplit:
    train_events: pl.DataFrame  # everything the recommender may learn from
    contexts: list[dict[str, float]]  # per held-out session: SKU -> weight the model sees
    targets: list[set[str]]  # per held-out session: SKUs carted or bought, not in context


def history_weights(events: pl.DataFrame) -> dict[str, float]:
    weights: dict[str, float] = {}
    for kind, sku in events.select("kind", "sku").iter_rows():
        weights[sku] = weights.get(sku, 0.0) + WEIGHTS[kind]
    return weights


def rec_split(sim: Simulation) -> RecSplit:
    """Test shoppers' last session with a cart is held out; the rest is training data."""
    ev = with_split(sim.events.filter(pl.col("user_id").str.starts_with("u")))
    carted = ev.filter(pl.col("kind") == "cart")
    last = (
        carted.filter(pl.col("split") == "test")
        .group_by("user_id")
        .agg(pl.col("session").max().alias("held"))
    )
    ev = ev.join(last, on="user_id", how="left")
    held = ev.filter(pl.col("session") == pl.col("held"))
    train = ev.filter(pl.col("held").is_null() | (pl.col("session") < pl.col("held")))
    earlier = train.filter(pl.col("held").is_not_null())
    contexts: list[dict[str, float]] = []
    targets: list[set[str]] = []
    history = {
        key[0]: group for key, group in earlier.sort("ts").group_by("user_id", maintain_order=True)
    }
    for (uid,), session in held.sort("ts").group_by("user_id", maintain_order=True):
        older = history_weights(history[uid]) if uid in history else {}
        first_view = session.filter(pl.col("kind") == "view")["sku"][0]
        context = compose(older, [first_view])
        wanted = set(session.filter(pl.col("kind") != "view")["sku"].to_list()) - set(context)
        if wanted:
            contexts.append(context)
            targets.append(wanted)
    return RecSplit(train.drop("split", "held"), contexts, targets)


def recall_at(recommended: list[list[str]], targets: list[set[str]], k: int = 10) -> float:
    hits = [len(set(r[:k]) & t) / min(len(t), k) for r, t in zip(recommended, targets, strict=True)]
    return float(np.mean(hits))


def popularity(events: pl.DataFrame) -> list[str]:
    counts = (
        events.group_by("sku").agg(pl.len().alias("n")).sort(["n", "sku"], descending=[True, False])
    )
    return counts["sku"].to_list()


def rec_metrics(model: RecommenderModel, split: RecSplit, k: int = 10) -> dict[str, Any]:
    got: list[list[str]] = []
    for start in range(0, len(split.contexts), 256):
        ctx = split.contexts[start : start + 256]
        got += model.recommend(ctx, [list(c) for c in ctx], k)
    ranked = popularity(split.train_events)
    baseline = [[s for s in ranked[: k + len(c)] if s not in c][:k] for c in split.contexts]
    ours, pop = recall_at(got, split.targets, k), recall_at(baseline, split.targets, k)
    return {
        "recall_at_10": round(ours, 4),
        "popularity_recall_at_10": round(pop, 4),
        "lift": round(ours / pop, 2) if pop else None,
        "sessions": len(split.targets),
    }


def evaluate(
    sim: Simulation, fraud: FraudModel, rec: RecommenderModel
) -> dict[str, Mapping[str, Any]]:
    return {
        "fraud": {"version": fraud.version, **fraud_metrics(fraud, sim)},
        "recommender": {"version": rec.version, **rec_metrics(rec, rec_split(sim))},
    }
