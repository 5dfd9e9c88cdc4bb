"""``agora models train`` and ``agora models evaluate [--json]``.

``train`` needs the ``train`` dependency group (``uv sync --group train``); it
regenerates the simulation, trains both models and writes ``fraud.onnx``,
``recommender.onnx``, ``recommender.items.json`` and the model cards to the
artifacts directory. ``evaluate`` needs only the serving dependencies: it
regenerates the same simulation (same seed), scores the held-out shoppers with
the shipped ``.onnx`` files through onnxruntime and prints the metrics; with
``--json`` the last line is one JSON object with ``fraud.roc_auc``,
``fraud.pr_auc``, ``recommender.recall_at_10`` and
``recommender.popularity_recall_at_10``. Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from serve.models.evaluation import evaluate
from serve.models.scoring import ARTIFACTS, FraudModel, RecommenderModel
from serve.models.simulation import SEED, simulate

TRAINER = "serve.models.train"  # imported only when training (the train group's libraries)
TARGETS = {"fraud.roc_auc": 0.95, "fraud.pr_auc": 0.6}
LIFT_TARGET = 1.5


def missed(report: dict[str, Any]) -> list[str]:
    out = [
        f"{name} {report[name.split('.')[0]][name.split('.')[1]]} < {floor}"
        for name, floor in TARGETS.items()
        if report[name.split(".")[0]][name.split(".")[1]] < floor
    ]
    rec = report["recommender"]
    if rec["recall_at_10"] < LIFT_TARGET * rec["popularity_recall_at_10"]:
        out.append(f"recommender recall@10 below {LIFT_TARGET}x popularity")
    return out


def run_evaluate(directory: Path, seed: int) -> dict[str, Any]:
    sim = simulate(seed)
    report = evaluate(sim, FraudModel(directory), RecommenderModel(directory))
    return {name: dict(part) for name, part in report.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agora models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train both models, write .onnx files and model cards")
    evaluate_ = sub.add_parser("evaluate", help="held-out metrics of the shipped models")
    for p in (train, evaluate_):
        p.add_argument("--dir", type=Path, default=ARTIFACTS, help="artifacts directory")
        p.add_argument("--seed", type=int, default=SEED, help="simulation seed")
    evaluate_.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)
    if args.action == "train":
        try:
            trainer = importlib.import_module(TRAINER)
        except ImportError as exc:
            print(f"training needs the train group: uv sync --group train ({exc})", file=sys.stderr)
            return 2
        cards = trainer.train(args.dir, args.seed)
        for name, card in cards.items():
            print(f"{name} {card['version']}: {json.dumps(card['test'], sort_keys=True)}")
        print(f"written to {args.dir}")
        return 0
    report = run_evaluate(args.dir, args.seed)
    problems = missed(report)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for name, part in report.items():
            print(name, json.dumps(part, sort_keys=True))
        print("targets: " + ("met" if not problems else "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
