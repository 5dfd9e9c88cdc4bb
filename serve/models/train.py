"""Training: needs the ``train`` dependency group (``uv sync --group train``).

- Fraud: scikit-learn's ``GradientBoostingClassifier`` on ``features.fraud_features``
  of the training shoppers' orders, converted with skl2onnx (plain gradient
  boosting converts; skl2onnx 1.20 cannot convert ``HistGradientBoostingClassifier``
  from scikit-learn 1.9). Thresholds come from the validation shoppers'
  precision-recall curve: ``block`` at the lowest score whose precision is at
  least ``BLOCK_PRECISION``, ``review`` at the lowest whose precision is at
  least ``REVIEW_PRECISION``.
- Recommender: item-to-item co-occurrence within sessions (views 1, carts 2,
  purchases 3), as a conditional rate ``C[i, j] / (count[i] + SHRINK)``, each
  item's ``NEIGHBOURS`` strongest neighbours kept, with a log-popularity prior;
  the ONNX graph (built with ``onnx.helper``) computes
  ``history @ S + alpha * pop - 1e9 * exclude`` and ``TopK``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import polars as pl
from onnx import TensorProto, helper, numpy_helper
from scipy import sparse
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier

from serve.models.evaluation import (
    fraud_metrics,
    fraud_xy,
    pr_curve,
    rec_metrics,
    rec_split,
)
from serve.models.features import NAMES, RAW_SCHEMA
from serve.models.scoring import ARTIFACTS, WEIGHTS, FraudModel, RecommenderModel
from serve.models.simulation import SEED, Simulation, simulate

BLOCK_PRECISION = 0.93
REVIEW_PRECISION = 0.75
NEIGHBOURS = 30
SHRINK = 5.0
POP_ALPHA = 0.001
OPSET = 17


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def train_fraud(sim: Simulation, out: Path, version: str) -> dict[str, Any]:
    x, y = fraud_xy(sim, "train")
    model = GradientBoostingClassifier(
        n_estimators=120, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=0
    ).fit(x, y)
    onx = to_onnx(
        model,
        x[:1],
        options={id(model): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    onx.doc_string = f"agora fraud {version}"
    (out / "fraud.onnx").write_bytes(onx.SerializeToString())
    # Thresholds from the validation shoppers' precision-recall curve.
    xv, yv = fraud_xy(sim, "val")
    _write_json(
        out / "fraud.card.json",
        {
            "version": version,
            "input": {"features": list(NAMES)},
            "thresholds": {"review": 1, "block": 1},
        },
    )
    pv = FraudModel(out).probabilities(xv)
    precision, recall, threshold = pr_curve(yv, pv)

    def lowest(min_precision: float) -> tuple[float, float, float]:
        ok = np.flatnonzero(precision >= min_precision)
        i = int(ok[-1]) if len(ok) else 0
        return float(threshold[i]), float(precision[i]), float(recall[i])

    block, review = lowest(BLOCK_PRECISION), lowest(REVIEW_PRECISION)
    review = min(review, block)
    card = {
        "name": "fraud",
        "version": version,
        "model": "GradientBoostingClassifier(n_estimators=120, max_depth=3, lr=0.1, subsample=0.8)",
        "input": {"name": "X", "features": list(NAMES), "raw_facts": list(RAW_SCHEMA)},
        "output": "probabilities[:, 1] = P(fraud)",
        "data": {
            "source": f"serve.models.simulation.simulate(seed={SEED})",
            "orders": sim.orders.height,
            "fraud_rate": round(float(sim.orders["is_fraud"].to_numpy().mean()), 4),
            "split": "by shopper: 60% train, 20% validation (thresholds), 20% test (metrics)",
        },
        "thresholds": {
            "review": review[0],
            "block": block[0],
            "rule": (
                f"block: lowest score with validation precision >= {BLOCK_PRECISION}; "
                f"review: lowest score with validation precision >= {REVIEW_PRECISION}"
            ),
            "validation_at_review": {"precision": review[1], "recall": review[2]},
            "validation_at_block": {"precision": block[1], "recall": block[2]},
        },
    }
    _write_json(out / "fraud.card.json", card)
    card["test"] = fraud_metrics(FraudModel(out), sim, "test")
    _write_json(out / "fraud.card.json", card)
    return card


def _cooccurrence(events: pl.DataFrame, skus: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {s: i for i, s in enumerate(skus)}
    per = (
        events.with_columns(w=pl.col("kind").replace_strict(WEIGHTS, return_dtype=pl.Float64))
        .group_by("session", "sku")
        .agg(pl.col("w").max())
    )
    sessions = per["session"].to_numpy()
    _, rows = np.unique(sessions, return_inverse=True)
    cols = np.array([index[s] for s in per["sku"].to_list()])
    m = sparse.csr_matrix((per["w"].to_numpy(), (rows, cols)), shape=(rows.max() + 1, len(skus)))
    c = (m.T @ m).toarray().astype(np.float64)
    np.fill_diagonal(c, 0.0)
    counts = np.asarray((m > 0).sum(axis=0)).ravel().astype(np.float64)
    return c, counts


def _graph(neighbours: np.ndarray, weights: np.ndarray, pop: np.ndarray, version: str) -> Any:
    """History @ S + pop - 1e9 * exclude, then TopK; S is scattered from its top neighbours.

    Only each item's ``NEIGHBOURS`` strongest neighbours are stored (a small
    file); the dense S is built by ``ScatterElements`` from constants, which
    onnxruntime folds once when the session is created.
    """
    n = neighbours.shape[0]
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
        helper.make_node("ScatterElements", ["zeros", "nb", "nbw"], ["S"], axis=1),
        helper.make_node("MatMul", ["history", "S"], ["affinity"]),
        helper.make_node("Add", ["affinity", "pop"], ["scored"]),
        helper.make_node("Mul", ["exclude", "big"], ["penalty"]),
        helper.make_node("Sub", ["scored", "penalty"], ["masked"]),
        helper.make_node(
            "TopK", ["masked", "k"], ["scores", "items"], axis=-1, largest=1, sorted=1
        ),
    ]
    inits = [
        numpy_helper.from_array(np.array([n, n], dtype=np.int64), "shape"),
        numpy_helper.from_array(neighbours.astype(np.int64), "nb"),
        numpy_helper.from_array(weights.astype(np.float32), "nbw"),
        numpy_helper.from_array(pop.reshape(1, n).astype(np.float32), "pop"),
        numpy_helper.from_array(np.array(1e9, dtype=np.float32), "big"),
    ]
    graph = helper.make_graph(
        nodes,
        "agora_recommender",
        [
            helper.make_tensor_value_info("history", TensorProto.FLOAT, ["batch", n]),
            helper.make_tensor_value_info("exclude", TensorProto.FLOAT, ["batch", n]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"]),
            helper.make_tensor_value_info("items", TensorProto.INT64, ["batch", "k"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.doc_string = f"agora recommender {version}"
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train_recommender(sim: Simulation, out: Path, version: str) -> dict[str, Any]:
    split = rec_split(sim)
    skus = sim.products["sku"].to_list()
    c, counts = _cooccurrence(split.train_events, skus)
    s = c / (counts[:, None] + SHRINK)  # ~ P(j in the session | i in it), shrunk for rare i
    neighbours = np.argsort(-s, axis=1, kind="stable")[:, :NEIGHBOURS]
    weights = np.take_along_axis(s, neighbours, axis=1)
    pop = np.log1p(counts) / max(1.0, float(np.log1p(counts).max())) * POP_ALPHA
    (out / "recommender.onnx").write_bytes(
        _graph(neighbours, weights, pop, version).SerializeToString()
    )
    _write_json(out / "recommender.items.json", skus)
    card = {
        "name": "recommender",
        "version": version,
        "model": (
            "item-to-item co-occurrence within sessions (view 1, cart 2, purchase 3):"
            f" S[i, j] = C[i, j] / (count[i] + {SHRINK}), each item's {NEIGHBOURS} strongest"
            f" neighbours kept; score = history @ S + {POP_ALPHA} * log-popularity"
            " - 1e9 * exclude; TopK in the graph"
        ),
        "inputs": {
            "history": (
                "float32 [batch, items]: the shopper's older interactions normalised to sum 1,"
                " plus 1.0 per recent item (views of the last hour, cart lines)"
            ),
            "exclude": "float32 [batch, items]: 1 for items never to return (the cart)",
            "k": "int64 [1]",
        },
        "outputs": {"items": "int64 [batch, k] indices into recommender.items.json"},
        "data": {
            "source": f"serve.models.simulation.simulate(seed={SEED})",
            "sessions_trained_on": int(split.train_events["session"].n_unique()),
            "held_out": (
                "the test shoppers' last session with a cart (20% of shoppers): the model sees"
                " their earlier sessions and the session's first view, and must find the items"
                " they then carted or bought"
            ),
        },
    }
    _write_json(out / "recommender.card.json", card)
    card["test"] = rec_metrics(RecommenderModel(out), split)
    _write_json(out / "recommender.card.json", card)
    return card


def train(out: Path = ARTIFACTS, seed: int = SEED) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    version = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    sim = simulate(seed)
    return {
        "fraud": train_fraud(sim, out, version),
        "recommender": train_recommender(sim, out, version),
    }
