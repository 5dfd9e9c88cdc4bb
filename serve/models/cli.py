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
``swap --dir DIR`` puts another models directory live on the running system
without a restart (``serve.models.deployments``: every replica reconfigures
itself); it loads the models here first and refuses (exit 2) ones that do not
load, then waits until both deployments answer with the new versions.
``swap`` without ``--dir`` goes back to the default models.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from cluster.cli import connect_ray
from cluster.settings import get_settings
from serve.models import deployments
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


def run_swap(directory: Path | None, wait_s: float) -> int:
    settings = get_settings()
    target = directory or (Path(settings.models_dir) if settings.models_dir else ARTIFACTS)
    try:
        versions = {
            deployments.FRAUD: FraudModel(target).version,
            deployments.RECOMMENDER: RecommenderModel(target).version,
        }
    except Exception as exc:  # a missing file, a broken graph, an unknown feature
        print(
            f"agora models swap: {target} does not load ({exc}); nothing changed", file=sys.stderr
        )
        return 2
    deployments.write_pointer(settings, directory)
    print(f"serving models from {target}: {json.dumps(versions, sort_keys=True)}")
    try:
        connect_ray(settings)
    except Exception as exc:  # nothing running: the next start loads the pointer's models
        print(f"no running system reached ({type(exc).__name__}); the next start serves them")
        return 0
    return asyncio.run(_until_live(versions, wait_s))


async def _until_live(versions: dict[str, str], wait_s: float) -> int:
    """Call each deployment until ten answers in a row carry its new version."""
    deadline = time.monotonic() + wait_s
    for name, version in versions.items():
        agreeing, answer = 0, ""  # calls land on any replica
        while agreeing < 10:
            try:
                answer = str(await asyncio.wait_for(deployments.handle(name).version.remote(), 5))
            except Exception as exc:  # the deployment is restarting or down
                answer = f"{type(exc).__name__}: {exc}"
            agreeing = agreeing + 1 if answer == version else 0
            if time.monotonic() > deadline:
                print(f"{name}: still answering {answer} after {wait_s:.0f}s", file=sys.stderr)
                return 1
            await asyncio.sleep(0.1 if agreeing else 0.5)
        print(f"{name}: {version} live")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agora models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train both models, write .onnx files and model cards")
    evaluate_ = sub.add_parser("evaluate", help="held-out metrics of the shipped models")
    for p in (train, evaluate_):
        p.add_argument("--dir", type=Path, default=ARTIFACTS, help="artifacts directory")
        p.add_argument("--seed", type=int, default=SEED, help="simulation seed")
    evaluate_.add_argument("--json", action="store_true", help="last line: one JSON object")
    swap = sub.add_parser("swap", help="serve another models directory, no restart")
    swap.add_argument("--dir", type=Path, default=None, help="default: the default models")
    swap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for replicas")
    args = parser.parse_args(argv)
    if args.action == "swap":
        return run_swap(args.dir, args.wait)
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
